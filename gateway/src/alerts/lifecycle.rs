//! The alert lifecycle: rule signals and staff actions in, committed alert events out.
//!
//! One active alert per (source, kind): a raise while one is active updates it. Every
//! change is committed to the store (with its outbox row) *before* it is returned for
//! publication. Escalation is measured on the wall clock from `raised_at`, so it survives a
//! restart: active alerts are reloaded and their escalation still fires on time.
//!
//! An acknowledgement covers the level it was given at: when an acknowledged alert rises in
//! level it is unacknowledged again (`updated`, with `rearmed_at`), and escalates if nobody
//! acknowledges it within the escalation period from that rise.
//!
//! # A staff resolve
//!
//! Resolving a device's alert by hand resets its rule condition ([`crate::rules::reset`]), so
//! the detector is never left deaf. Whether the sensor still reports the condition is read
//! from the rules at that moment and recorded on the resolved alert (`still_reported`):
//!
//! - it does: the rules raise a **new** alert at once (`continues` = the first alert of this
//!   hazard), which then follows the sensor; residents get no all-clear for the resolved one
//!   and see the new one as the same, continuing notice;
//! - it does not (the gas is gone, only the clear-hold was running): the condition is
//!   forgotten, residents are told it was resolved by staff, and the next hazard reading
//!   raises a new alert.
//!
//! Only a sensor-driven resolve (`resolved_by = "auto"`) ends a continuing hazard for
//! residents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use edge_config::{AlertKind, Config, Level};

use super::linkage::{self, Command};
use super::messages;
use super::model::{ActionOutcome, Alert, AlertState, EventKind, Location, Source};
use super::store::{AlertStore, StoreError};
use crate::rules::{Change, ResetSender, RuleReset, Signal};

/// Why a staff action (acknowledge, resolve) was refused. The console answers `404`, `409`
/// and `503` respectively.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no alert with id {0}")]
    NotFound(String),
    #[error("alert {0} is already resolved")]
    Resolved(String),
    #[error("storage fault, nothing recorded: {0}")]
    Store(#[from] StoreError),
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

/// Readings keys that evidence attached after the commit adds (see
/// [`Lifecycle::attach_evidence`]); a later update of the alert keeps them.
pub const ATTACHED_KEYS: [&str; 4] = ["linked_cameras", "snapshot", "clip", "evidence_camera"];

/// `new` readings, keeping what was attached to `old` after its commit (a sensor's next
/// reading must not drop the cameras' snapshot); an alert without attached evidence (a
/// camera's own, whose readings carry fresh evidence) takes `new` as it is.
fn keep_attached(old: &serde_json::Value, mut new: serde_json::Value) -> serde_json::Value {
    if old.get("linked_cameras").is_none() {
        return new;
    }
    if let Some(fresh) = new.as_object_mut() {
        for key in ATTACHED_KEYS {
            if let (Some(v), false) = (old.get(key), fresh.contains_key(key)) {
                fresh.insert(key.to_owned(), v.clone());
            }
        }
    }
    new
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
    /// Staff resolves go to the rules through it, and it says which conditions the sensors
    /// still report. Never waited on (see [`ResetSender`]).
    rules: Option<ResetSender>,
    /// (source, kind) whose alert staff resolved while the sensor still reported it, with
    /// the first alert of that hazard: the next alert of the key continues it. In memory
    /// only: the rules raise that alert at once.
    continuing: HashMap<(String, AlertKind), String>,
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
            rules: None,
            continuing: HashMap::new(),
            config,
            store,
            active: HashMap::new(),
        };
        for alert in me.store.active()? {
            me.active.insert((alert.source.key(), alert.kind), alert);
        }
        Ok(me)
    }

    /// Switches to a reloaded `config` (linkage, escalation and confirmation times, device
    /// and camera details of new alerts). Returns the active alerts whose device or camera is
    /// no longer configured (or a device whose kind changed): the caller resolves them, with
    /// the reason, through the ordinary path.
    pub fn reconfigure(&mut self, config: Arc<Config>) -> Vec<(Source, AlertKind)> {
        let escalate = Duration::from_secs(config.rules.timing.escalate_after_s.into());
        self.escalate_after = chrono::Duration::from_std(escalate).unwrap_or(chrono::Duration::MAX);
        self.actuator_timeout =
            chrono::Duration::seconds(config.rules.timing.actuator_confirm_s.into());
        let gone = |source: &Source| match source {
            Source::Device(id) => {
                let old = self.config.devices.iter().find(|d| &d.id == id);
                let new = config.devices.iter().find(|d| &d.id == id);
                match (old, new) {
                    (_, None) => true,
                    (Some(o), Some(n)) => o.kind != n.kind,
                    (None, Some(_)) => false,
                }
            }
            Source::Camera(id) => !config.cameras.iter().any(|c| &c.id == id && c.enabled),
            Source::Gateway(_) => false,
        };
        let mut removed: Vec<(Source, AlertKind)> = self
            .active
            .values()
            .filter(|a| gone(&a.source))
            .map(|a| (a.source.clone(), a.kind))
            .collect();
        removed.sort_by_key(|(s, k)| (s.key(), k.as_str()));
        self.config = config;
        removed
    }

    /// Sends actuator commands (linkage) to `sink` from now on.
    pub fn set_command_sink(&mut self, sink: tokio::sync::mpsc::Sender<Command>) {
        self.commands = Some(sink);
    }

    /// Tells the rules of staff resolves through `resets` from now on.
    pub fn set_rule_resets(&mut self, resets: ResetSender) {
        self.rules = Some(resets);
    }

    /// Hands rule resets that found the channel full to the rules stage (every tick).
    pub fn flush_rule_resets(&mut self) {
        if let Some(r) = self.rules.as_mut() {
            r.flush();
        }
    }

    /// The active alerts (e.g. to restore rule conditions and republish after a restart).
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    pub fn store(&self) -> &AlertStore {
        &self.store
    }

    /// Stores a compound's alert event (street station; see [`super::remote`]).
    pub fn record_remote(
        &mut self,
        compound: &str,
        event: &super::remote::RemoteEvent,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let forward = self
            .config
            .compounds
            .iter()
            .any(|c| c.id == compound && c.forward);
        self.store.record_remote(compound, event, at, forward)
    }

    /// Records a compound's heartbeat (street station).
    pub fn record_heartbeat(
        &mut self,
        compound: &str,
        body: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.store.record_heartbeat(compound, body, at)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Queues a command for the actuators' publisher (never waits); false when there is no
    /// room or no publisher.
    pub fn send_command(&self, command: Command) -> bool {
        self.commands
            .as_ref()
            .is_some_and(|sink| sink.try_send(command).is_ok())
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
        let now = at;
        let previous_level = self.active.get(&key).map(|a| a.level);
        let (mut alert, event) = match self.active.get(&key) {
            Some(current) => {
                let mut a = current.clone();
                let rose = level > a.level;
                a.level = level;
                a.readings = keep_attached(&a.readings, readings);
                match a.state {
                    AlertState::Raised => a.state = AlertState::Updated,
                    // The acknowledgement covered the lower level only.
                    AlertState::Acknowledged if rose => {
                        a.state = AlertState::Updated;
                        a.rearmed_at = Some(now);
                    }
                    _ => {}
                }
                a.updated_at = now;
                a.message = messages::message(kind, level, &a.location.label);
                (a, EventKind::Updated)
            }
            None => {
                let mut a = self.new_alert(source, location, kind, level, readings, now);
                a.continues = self.continuing.get(&key).cloned();
                (a, EventKind::Raised)
            }
        };
        let commands = if previous_level.is_none_or(|p| level > p) {
            linkage::plan(&self.config, &mut alert, at)
        } else {
            Vec::new()
        };
        self.store.record(&mut alert, event)?;
        if event == EventKind::Raised {
            self.continuing.remove(&key);
        }
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

    /// Merges `evidence` into the readings of the active alert `id` (an `updated` event);
    /// `None` when that alert is no longer active (the evidence is then not recorded).
    pub fn attach_evidence(
        &mut self,
        id: &str,
        evidence: &serde_json::Map<String, serde_json::Value>,
        at: DateTime<Utc>,
    ) -> Result<Option<Alert>, StoreError> {
        let Some((key, alert)) = self.active.iter().find(|(_, a)| a.id == id) else {
            tracing::info!(id, "evidence for an alert no longer active is not attached");
            return Ok(None);
        };
        let (key, mut alert) = (key.clone(), alert.clone());
        if !alert.readings.is_object() {
            alert.readings = serde_json::json!({ "value": alert.readings });
        }
        if let Some(readings) = alert.readings.as_object_mut() {
            readings.extend(evidence.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        alert.updated_at = at;
        self.store.record(&mut alert, EventKind::Updated)?;
        self.active.insert(key, alert.clone());
        Ok(Some(alert))
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
                    .any(|x| x.target == device && x.outcome == ActionOutcome::Pending)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in keys {
            let mut alert = self.active[&key].clone();
            if linkage::confirm(&mut alert, device, state, at) {
                alert.updated_at = at;
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
            .filter(|(_, a)| {
                a.actions
                    .iter()
                    .any(|x| x.outcome == ActionOutcome::Pending)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let mut alert = self.active[&key].clone();
            if linkage::expire(&mut alert, self.actuator_timeout, at) {
                tracing::warn!(id = %alert.id, "actuator did not confirm in time");
                alert.updated_at = at;
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
        now: DateTime<Utc>,
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
            raised_at: now,
            updated_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            escalated_at: None,
            resolved_at: None,
            resolved_by: None,
            rearmed_at: None,
            still_reported: false,
            continues: None,
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
        let Some(alert) = self.active.get(&key).cloned() else {
            return Ok(None);
        };
        self.close(key, alert, by, at, false).map(Some)
    }

    /// Records the resolution of `alert`, the active alert of `key`.
    fn close(
        &mut self,
        key: (String, AlertKind),
        mut alert: Alert,
        by: &str,
        at: DateTime<Utc>,
        still_reported: bool,
    ) -> Result<Alert, StoreError> {
        alert.state = AlertState::Resolved;
        alert.resolved_at = Some(at);
        alert.resolved_by = Some(by.to_owned());
        alert.updated_at = at;
        alert.still_reported = still_reported;
        self.store.record(&mut alert, EventKind::Resolved)?;
        self.active.remove(&key);
        Ok(alert)
    }

    /// A staff member (or the platform) acknowledges an alert.
    pub fn acknowledge(
        &mut self,
        id: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Alert, LifecycleError> {
        let (key, mut alert) = self.active_by_id(id)?;
        if alert.state == AlertState::Acknowledged {
            return Ok(alert);
        }
        alert.state = AlertState::Acknowledged;
        alert.acknowledged_at = Some(at);
        alert.acknowledged_by = Some(by.to_owned());
        alert.updated_at = at;
        self.store.record(&mut alert, EventKind::Acknowledged)?;
        self.active.insert(key, alert.clone());
        Ok(alert)
    }

    /// A staff member resolves an alert by hand; a device's rule condition is reset (see the
    /// module docs).
    pub fn resolve(
        &mut self,
        id: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Alert, LifecycleError> {
        let (key, alert) = self.active_by_id(id)?;
        let kind = key.1;
        let device = match &alert.source {
            Source::Device(d) => Some(d.clone()),
            Source::Camera(_) | Source::Gateway(_) => None,
        };
        let still_reported = match (&device, &self.rules) {
            (Some(d), Some(rules)) => rules.still_reported(d, kind),
            _ => false,
        };
        let resolved = self.close(key.clone(), alert, by, at, still_reported)?;
        if still_reported {
            let first = resolved.continues.as_ref().unwrap_or(&resolved.id);
            self.continuing.insert(key, first.clone());
        }
        if let (Some(device), Some(rules)) = (device, self.rules.as_mut()) {
            rules.send(RuleReset {
                device,
                kind,
                level: resolved.level,
                still_reported,
            });
        }
        Ok(resolved)
    }

    /// The active alert `id` with its key; else why not: resolved, unknown, or the store
    /// could not say.
    fn active_by_id(&self, id: &str) -> Result<((String, AlertKind), Alert), LifecycleError> {
        if let Some((key, alert)) = self.active.iter().find(|(_, a)| a.id == id) {
            return Ok((key.clone(), alert.clone()));
        }
        match self.store.get(id)? {
            Some(_) => Err(LifecycleError::Resolved(id.to_owned())),
            None => Err(LifecycleError::NotFound(id.to_owned())),
        }
    }

    /// Escalates red/orange alerts not acknowledged within `escalate_after_s`.
    pub fn on_tick(&mut self, at: DateTime<Utc>) -> Result<Vec<Alert>, PartialCommit> {
        let due: Vec<_> = self
            .active
            .iter()
            .filter(|(_, a)| matches!(a.state, AlertState::Raised | AlertState::Updated))
            .filter(|(_, a)| a.level >= Level::Orange)
            .filter(|(_, a)| {
                // From the rise that cancelled an acknowledgement, else from the raise.
                let since = a.rearmed_at.unwrap_or(a.raised_at);
                at.signed_duration_since(since) >= self.escalate_after
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in due {
            let mut alert = self.active[&key].clone();
            alert.state = AlertState::Escalated;
            alert.escalated_at = Some(at);
            alert.updated_at = at;
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
            Err(LifecycleError::Resolved(_))
        ));
        assert!(matches!(
            l.resolve("01KAV7Q2XK4T5J0ZC3M8W6E1PB", "duty", t(403)),
            Err(LifecycleError::NotFound(_))
        ));
    }

    #[test]
    fn an_alert_acknowledged_at_yellow_that_rises_to_red_escalates_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut l =
            Lifecycle::new(config(), AlertStore::open(&dir.path().join("db")).unwrap()).unwrap();
        let a = l
            .on_signal(&signal(Change::Raise(Level::Yellow)), t(0))
            .unwrap()
            .unwrap();
        l.acknowledge(&a.id, "duty", t(10)).unwrap();
        let red = l
            .on_signal(&signal(Change::Update(Level::Red)), t(100))
            .unwrap()
            .unwrap();
        assert_eq!(red.level, Level::Red);
        assert_eq!(
            red.state,
            AlertState::Updated,
            "an acknowledgement at yellow does not cover red"
        );
        assert!(
            l.on_tick(t(279)).unwrap().is_empty(),
            "the escalation period runs from the rise, not from the raise"
        );
        let escalated = l.on_tick(t(280)).unwrap();
        assert_eq!(escalated.len(), 1, "unacknowledged at red for 180 s");
        assert_eq!(
            (
                escalated[0].id.as_str(),
                escalated[0].state,
                escalated[0].level
            ),
            (a.id.as_str(), AlertState::Escalated, Level::Red)
        );
        // Acknowledged again at red: no further escalation.
        l.acknowledge(&a.id, "duty", t(300)).unwrap();
        assert!(l.on_tick(t(900)).unwrap().is_empty());
    }

    #[test]
    fn a_rearmed_escalation_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let mut l = Lifecycle::new(config(), AlertStore::open(&path).unwrap()).unwrap();
            let a = l
                .on_signal(&signal(Change::Raise(Level::Yellow)), t(0))
                .unwrap()
                .unwrap();
            l.acknowledge(&a.id, "duty", t(10)).unwrap();
            l.on_signal(&signal(Change::Update(Level::Orange)), t(500))
                .unwrap()
                .unwrap();
        }
        let mut l = Lifecycle::new(config(), AlertStore::open(&path).unwrap()).unwrap();
        assert!(l.on_tick(t(679)).unwrap().is_empty());
        assert_eq!(l.on_tick(t(680)).unwrap().len(), 1);
    }

    #[test]
    fn a_staff_resolve_resets_the_rule_and_the_alert_raised_again_continues_the_hazard() {
        let dir = tempfile::tempdir().unwrap();
        let mut l =
            Lifecycle::new(config(), AlertStore::open(&dir.path().join("db")).unwrap()).unwrap();
        let (tx, mut rx) = crate::rules::reset::channel();
        l.set_rule_resets(tx);
        let raise = signal(Change::Raise(Level::Red));
        let first = l.on_signal(&raise, t(0)).unwrap().unwrap();

        // The sensor still reports the gas: no all-clear, a reset that promises a new alert.
        rx.set_reporting("b2-u3-gas", AlertKind::Gas, true);
        let resolved = l.resolve(&first.id, "duty", t(10)).unwrap();
        assert!(resolved.still_reported);
        let reset = rx.try_recv().expect("the rules are told");
        assert_eq!(
            (reset.device, reset.kind, reset.level, reset.still_reported),
            ("b2-u3-gas".to_owned(), AlertKind::Gas, Level::Red, true)
        );
        let second = l.on_signal(&raise, t(11)).unwrap().unwrap();
        assert_eq!(second.continues.as_deref(), Some(first.id.as_str()));
        // Resolved again while it persists: the hazard is still the first alert's.
        l.resolve(&second.id, "duty", t(20)).unwrap();
        assert!(rx.try_recv().expect("the rules are told").still_reported);
        let third = l.on_signal(&raise, t(21)).unwrap().unwrap();
        assert_eq!(third.continues.as_deref(), Some(first.id.as_str()));

        // The sensor reads normal: an ordinary resolve, and the next alert is a new hazard.
        rx.set_reporting("b2-u3-gas", AlertKind::Gas, false);
        let resolved = l.resolve(&third.id, "duty", t(30)).unwrap();
        assert!(!resolved.still_reported);
        assert!(!rx.try_recv().expect("the rules are told").still_reported);
        let fourth = l.on_signal(&raise, t(40)).unwrap().unwrap();
        assert_eq!(fourth.continues, None);
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
