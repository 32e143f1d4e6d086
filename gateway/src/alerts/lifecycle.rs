//! The alert lifecycle: rule signals and staff actions in, committed alert events out.
//!
//! One active alert per (source, kind): a raise while one is active updates it. Every
//! change is committed to the store (with its outbox row) *before* it is returned for
//! publication. Escalation is measured on the wall clock from `raised_at`, so it survives a
//! restart: active alerts are reloaded and their escalation still fires on time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use edge_config::{AlertKind, Config, Level};

use super::linkage::{self, Command};
use super::messages;
use super::model::{Alert, AlertState, EventKind, Location, Source};
use super::store::{AlertStore, StoreError};
use crate::rules::{Change, Signal};

/// Errors of staff actions.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no active alert with id {0}")]
    NotActive(String),
}

/// A step that commits several events (a tick's escalations, an actuator confirming the
/// actions of several alerts) stopped at a failed commit. The events committed before it are
/// in the store and must still be published.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {} events committed)", committed.len())]
pub struct PartialCommit {
    pub committed: Vec<Alert>,
    #[source]
    pub error: StoreError,
}

/// Formats a time as the alert JSON does: RFC 3339, milliseconds, UTC.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The alert lifecycle over one store.
pub struct Lifecycle {
    config: Arc<Config>,
    store: AlertStore,
    /// Active alerts by (source key, kind): the in-memory mirror of the store's
    /// `alerts_one_active` index, so a signal needs no query.
    active: HashMap<(String, AlertKind), Alert>,
    escalate_after: chrono::Duration,
    actuator_timeout: chrono::Duration,
    /// Where actuator commands go once their intent is committed. Bounded and never waited
    /// on: if it is full the action stays `pending`, times out and is shown as such.
    commands: Option<tokio::sync::mpsc::Sender<Command>>,
}

impl Lifecycle {
    /// Wraps a store and reloads its active alerts.
    pub fn new(config: Arc<Config>, store: AlertStore) -> Result<Self, StoreError> {
        let escalate = Duration::from_secs(config.rules.timing.escalate_after_s.into());
        let confirm = chrono::Duration::seconds(config.rules.timing.actuator_confirm_s.into());
        let mut me = Lifecycle {
            escalate_after: chrono::Duration::from_std(escalate).unwrap_or(chrono::Duration::MAX),
            actuator_timeout: confirm,
            commands: None,
            config,
            store,
            active: HashMap::new(),
        };
        for alert in me.store.active()? {
            me.active.insert((alert.source.key(), alert.kind), alert);
        }
        Ok(me)
    }

    /// Sends actuator commands (linkage) to `sink` from now on.
    pub fn set_command_sink(&mut self, sink: tokio::sync::mpsc::Sender<Command>) {
        self.commands = Some(sink);
    }

    /// The active alerts (e.g. to restore rule conditions and republish after a restart).
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    pub fn store(&self) -> &AlertStore {
        &self.store
    }

    /// Commits a self-test probe (see [`AlertStore::record_probe`]).
    pub fn record_probe(&mut self, nonce: u64) -> Result<(), StoreError> {
        self.store.record_probe(nonce)
    }

    /// Applies a rule signal; returns the committed alert event, if any.
    pub fn on_signal(
        &mut self,
        s: &Signal,
        at: DateTime<Utc>,
    ) -> Result<Option<Alert>, StoreError> {
        let Some(device) = self.config.devices.get(s.device) else {
            return Ok(None);
        };
        let source = Source::Device(device.id.clone());
        let readings = serde_json::json!({ "causes": s.causes, "values": s.values });
        match s.change {
            Change::Raise(level) | Change::Update(level) => {
                let location = Location::resolve(&self.config, &device.location);
                self.raise_or_update(source, location, s.kind, level, readings, at)
                    .map(Some)
            }
            Change::Clear => self.resolve_source(&source, s.kind, "auto", at),
        }
    }

    /// Raises an alert, or updates the active one of the same (source, kind).
    pub fn raise_or_update(
        &mut self,
        source: Source,
        location: Location,
        kind: AlertKind,
        level: Level,
        readings: serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Alert, StoreError> {
        let key = (source.key(), kind);
        let now = timestamp(at);
        let previous_level = self.active.get(&key).map(|a| a.level);
        let (mut alert, event) = match self.active.get(&key) {
            Some(current) => {
                let mut a = current.clone();
                a.level = level;
                a.readings = readings;
                a.updated_at = now;
                if a.state == AlertState::Raised {
                    a.state = AlertState::Updated;
                }
                a.message = messages::message(kind, level, &a.location.label);
                (a, EventKind::Updated)
            }
            None => (
                self.new_alert(source, location, kind, level, readings, now),
                EventKind::Raised,
            ),
        };
        let commands = if previous_level.is_none_or(|p| level > p) {
            linkage::plan(&self.config, &mut alert, at)
        } else {
            Vec::new()
        };
        self.store.record(&mut alert, event)?;
        self.active.insert(key, alert.clone());
        self.send(commands);
        Ok(alert)
    }

    fn send(&self, commands: Vec<Command>) {
        let Some(sink) = &self.commands else {
            return;
        };
        for c in commands {
            if let Err(e) = sink.try_send(c) {
                tracing::error!(error = %e, "actuator command not sent; the action will time out");
            }
        }
    }

    /// An actuator reported its state: confirms matching pending actions.
    pub fn on_actuator_state(
        &mut self,
        device: &str,
        state: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<Alert>, PartialCommit> {
        let keys: Vec<_> = self
            .active
            .iter()
            .filter(|(_, a)| {
                a.actions
                    .iter()
                    .any(|x| x.target == device && x.outcome == linkage::PENDING)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in keys {
            let mut alert = self.active[&key].clone();
            if linkage::confirm(&mut alert, device, state, at) {
                alert.updated_at = timestamp(at);
                self.commit_into(key, alert, EventKind::Updated, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Records `alert` as the active alert of `key`, appending it to `out`; on failure hands
    /// back what `out` holds (committed before) with the error.
    fn commit_into(
        &mut self,
        key: (String, AlertKind),
        mut alert: Alert,
        event: EventKind,
        out: &mut Vec<Alert>,
    ) -> Result<(), PartialCommit> {
        if let Err(error) = self.store.record(&mut alert, event) {
            return Err(PartialCommit {
                committed: std::mem::take(out),
                error,
            });
        }
        self.active.insert(key, alert.clone());
        out.push(alert);
        Ok(())
    }

    fn expire_actions(
        &mut self,
        at: DateTime<Utc>,
        out: &mut Vec<Alert>,
    ) -> Result<(), PartialCommit> {
        let keys: Vec<_> = self
            .active
            .iter()
            .filter(|(_, a)| a.actions.iter().any(|x| x.outcome == linkage::PENDING))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let mut alert = self.active[&key].clone();
            if linkage::expire(&mut alert, self.actuator_timeout, at) {
                tracing::warn!(id = %alert.id, "actuator did not confirm in time");
                alert.updated_at = timestamp(at);
                self.commit_into(key, alert, EventKind::Updated, out)?;
            }
        }
        Ok(())
    }

    fn new_alert(
        &self,
        source: Source,
        location: Location,
        kind: AlertKind,
        level: Level,
        readings: serde_json::Value,
        now: String,
    ) -> Alert {
        Alert {
            id: ulid::Ulid::generate().to_string(),
            seq: 0,
            event: EventKind::Raised,
            site: self.config.site.id.clone(),
            kind,
            level,
            state: AlertState::Raised,
            message: messages::message(kind, level, &location.label),
            advice: messages::advice_for(kind),
            source,
            location,
            raised_at: now.clone(),
            updated_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            escalated_at: None,
            resolved_at: None,
            resolved_by: None,
            readings,
            actions: Vec::new(),
        }
    }

    /// Resolves the active alert of (source, kind), if any.
    pub fn resolve_source(
        &mut self,
        source: &Source,
        kind: AlertKind,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Alert>, StoreError> {
        let key = (source.key(), kind);
        let Some(mut alert) = self.active.get(&key).cloned() else {
            return Ok(None);
        };
        alert.state = AlertState::Resolved;
        alert.resolved_at = Some(timestamp(at));
        alert.resolved_by = Some(by.to_owned());
        alert.updated_at = timestamp(at);
        self.store.record(&mut alert, EventKind::Resolved)?;
        self.active.remove(&key);
        Ok(Some(alert))
    }

    /// A staff member (or the platform) acknowledges an alert.
    pub fn acknowledge(
        &mut self,
        id: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Alert, LifecycleError> {
        let key = self.key_of(id)?;
        let mut alert = self.active[&key].clone();
        if alert.state == AlertState::Acknowledged {
            return Ok(alert);
        }
        alert.state = AlertState::Acknowledged;
        alert.acknowledged_at = Some(timestamp(at));
        alert.acknowledged_by = Some(by.to_owned());
        alert.updated_at = timestamp(at);
        self.store.record(&mut alert, EventKind::Acknowledged)?;
        self.active.insert(key, alert.clone());
        Ok(alert)
    }

    /// A staff member resolves an alert by hand.
    pub fn resolve(
        &mut self,
        id: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Alert, LifecycleError> {
        let (source, kind) = self.key_of(id)?;
        let source = self.active[&(source.clone(), kind)].source.clone();
        self.resolve_source(&source, kind, by, at)?
            .ok_or_else(|| LifecycleError::NotActive(id.to_owned()))
    }

    fn key_of(&self, id: &str) -> Result<(String, AlertKind), LifecycleError> {
        self.active
            .iter()
            .find(|(_, a)| a.id == id)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| LifecycleError::NotActive(id.to_owned()))
    }

    /// Escalates red/orange alerts not acknowledged within `escalate_after_s`.
    pub fn on_tick(&mut self, at: DateTime<Utc>) -> Result<Vec<Alert>, PartialCommit> {
        let due: Vec<_> = self
            .active
            .iter()
            .filter(|(_, a)| matches!(a.state, AlertState::Raised | AlertState::Updated))
            .filter(|(_, a)| a.level >= Level::Orange)
            .filter(|(_, a)| {
                DateTime::parse_from_rfc3339(&a.raised_at)
                    .map(|t| at.signed_duration_since(t) >= self.escalate_after)
                    .unwrap_or(false)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in due {
            let mut alert = self.active[&key].clone();
            alert.state = AlertState::Escalated;
            alert.escalated_at = Some(timestamp(at));
            alert.updated_at = timestamp(at);
            self.commit_into(key, alert, EventKind::Escalated, &mut out)?;
        }
        self.expire_actions(at, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::Values;
    use crate::rules::Cause;

    const CONFIG: &str = r#"
[site]
id = "t1"
name = "Test compound"
kind = "compound"

[[locations.buildings]]
id = "b2"
name = "2号楼"
floors = 18
[[locations.buildings.units]]
id = "u3"
name = "3单元"

[[devices]]
id = "b2-u3-gas"
kind = "gas"
location = { building = "b2", unit = "u3", floor = 5, room = "501" }

[rules.timing]
escalate_after_s = 180
"#;

    fn config() -> Arc<Config> {
        Arc::new(
            edge_config::parse(CONFIG, "test.toml", Path::new(".")).expect("valid test config"),
        )
    }

    use std::path::Path;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap()
    }

    fn signal(change: Change) -> Signal {
        Signal {
            device: 0,
            kind: AlertKind::Gas,
            change,
            causes: vec![Cause::GasLowStage {
                lel_pct: 12.5,
                threshold_pct: 10.0,
            }],
            values: Values {
                gas_lel_pct: Some(12.5),
                ..Values::default()
            },
        }
    }

    fn outbox_rows(l: &Lifecycle) -> i64 {
        l.store()
            .connection()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn raise_update_resolve_is_one_alert_with_increasing_seq_and_an_outbox_row_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = AlertStore::open(&dir.path().join("db")).unwrap();
        let mut l = Lifecycle::new(config(), store).unwrap();
        let raised = l
            .on_signal(&signal(Change::Raise(Level::Orange)), t(0))
            .unwrap()
            .unwrap();
        assert_eq!(
            (raised.seq, raised.event, raised.level),
            (1, EventKind::Raised, Level::Orange)
        );
        assert_eq!(raised.location.label, "2号楼 3单元 5F 501");
        assert_eq!(
            raised.message.zh_cn,
            "【橙色】燃气泄漏报警：2号楼 3单元 5F 501"
        );
        let updated = l
            .on_signal(&signal(Change::Update(Level::Red)), t(5))
            .unwrap()
            .unwrap();
        assert_eq!(updated.id, raised.id);
        assert_eq!(
            (updated.seq, updated.event, updated.level),
            (2, EventKind::Updated, Level::Red)
        );
        let resolved = l.on_signal(&signal(Change::Clear), t(60)).unwrap().unwrap();
        assert_eq!((resolved.seq, resolved.state), (3, AlertState::Resolved));
        assert_eq!(l.active().count(), 0);
        assert_eq!(outbox_rows(&l), 3);
        // A new hazard after resolution is a new alert.
        let again = l
            .on_signal(&signal(Change::Raise(Level::Orange)), t(100))
            .unwrap()
            .unwrap();
        assert_ne!(again.id, raised.id);
        assert_eq!(again.seq, 4);
    }

    #[test]
    fn unacknowledged_orange_escalates_after_the_configured_time_acknowledged_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut l =
            Lifecycle::new(config(), AlertStore::open(&dir.path().join("db")).unwrap()).unwrap();
        let a = l
            .on_signal(&signal(Change::Raise(Level::Orange)), t(0))
            .unwrap()
            .unwrap();
        assert!(l.on_tick(t(179)).unwrap().is_empty());
        let escalated = l.on_tick(t(180)).unwrap();
        assert_eq!(escalated.len(), 1);
        assert_eq!(escalated[0].state, AlertState::Escalated);
        assert!(l.on_tick(t(400)).unwrap().is_empty(), "escalates once");

        let acked = l.acknowledge(&a.id, "duty", t(401)).unwrap();
        assert_eq!(acked.acknowledged_by.as_deref(), Some("duty"));
        let resolved = l.resolve(&a.id, "duty", t(402)).unwrap();
        assert_eq!(resolved.resolved_by.as_deref(), Some("duty"));
        assert!(matches!(
            l.acknowledge(&a.id, "duty", t(403)),
            Err(LifecycleError::NotActive(_))
        ));
    }

    #[test]
    fn alert_json_matches_the_documented_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/alert.schema.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut l =
            Lifecycle::new(config(), AlertStore::open(&dir.path().join("db")).unwrap()).unwrap();
        let a = l
            .on_signal(&signal(Change::Raise(Level::Orange)), t(0))
            .unwrap()
            .unwrap();
        let json = serde_json::to_value(&a).unwrap();
        for key in schema["required"].as_array().unwrap() {
            assert!(
                json.get(key.as_str().unwrap()).is_some(),
                "missing required {key}"
            );
        }
        let props = &schema["properties"];
        for key in json.as_object().unwrap().keys() {
            assert!(
                props.get(key).is_some(),
                "{key} is not documented in the schema"
            );
        }
        for field in ["event", "kind", "level", "state"] {
            let allowed = props[field]["enum"].as_array().unwrap();
            assert!(
                allowed.contains(&json[field]),
                "{field} = {} not in the schema",
                json[field]
            );
        }
        // Every alert kind the gateway knows is documented.
        let kinds = props["kind"]["enum"].as_array().unwrap();
        for kind in [
            AlertKind::Smoke,
            AlertKind::BatteryRemoved,
            AlertKind::CameraDown,
            AlertKind::BufferFull,
            AlertKind::Loitering,
        ] {
            assert!(
                kinds.contains(&serde_json::to_value(kind).unwrap()),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn active_alerts_and_their_escalation_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let id = {
            let mut l = Lifecycle::new(config(), AlertStore::open(&path).unwrap()).unwrap();
            l.on_signal(&signal(Change::Raise(Level::Red)), t(0))
                .unwrap()
                .unwrap()
                .id
        };
        let mut l = Lifecycle::new(config(), AlertStore::open(&path).unwrap()).unwrap();
        assert_eq!(
            l.active().map(|a| a.id.clone()).collect::<Vec<_>>(),
            vec![id.clone()]
        );
        let escalated = l.on_tick(t(200)).unwrap();
        assert_eq!(escalated.len(), 1);
        assert_eq!(escalated[0].id, id);
        assert_eq!(escalated[0].seq, 2, "seq continues after the restart");
    }
}
