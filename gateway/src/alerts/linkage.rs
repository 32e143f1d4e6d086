//! Linkage: alerts drive actuators (close a gas valve, sound a siren, play a PA message).
//!
//! When an alert is raised or its level rises, every `[[rules.linkage]]` that matches its
//! kind and level adds one [`ActionRecord`] per target to the alert, `pending`, in the same
//! transaction that records the alert — so the intent is durable before the command is
//! sent. The command is then published on the actuator's command topic. The actuator's
//! state report (`{"state":"closed"}` …) confirms the action; no confirmation within
//! `rules.timing.actuator_confirm_s` marks it `timed_out`. Both outcomes are recorded on the
//! alert (an `updated` event) so staff and the platform see whether the valve really closed.
//!
//! Command payloads (JSON on `Device::command_topic()`):
//!
//! | action | native | zigbee2mqtt |
//! |---|---|---|
//! | `close_valve` | `{"command":"close","alert_id":…}` | `{"state":"OFF"}` |
//! | `sound_siren` | `{"command":"on","alert_id":…}` | `{"warning":{"mode":"emergency","duration":600}}` |
//! | `play_pa` | `{"command":"play","alert_id":…,"message":{"zh-CN":…,"en":…}}` | (not supported: PA speakers are native) |
//! | `switch_off` | `{"command":"off","alert_id":…}` | `{"state":"OFF"}` |
//!
//! `switch_off` with `own_plug = true` also targets the alert's own plug: the smart plug that
//! raised it, or the `plug` of the e-bike battery monitor that raised it — so one linkage
//! covers every charging slot of a shed.

use chrono::{DateTime, Utc};
use edge_config::{Config, Device, DeviceKind, LinkageAction, PayloadFormat};
use serde_json::json;

use super::model::{ActionOutcome, ActionRecord, Alert, Source};

/// A command to publish to an actuator.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Adds pending actions for every matching linkage target not yet actioned on this alert;
/// returns the commands to send.
pub fn plan(config: &Config, alert: &mut Alert, at: DateTime<Utc>) -> Vec<Command> {
    let mut commands = Vec::new();
    for linkage in config.rules.linkages_for(alert.kind, alert.level) {
        let own = linkage.own_plug.then(|| own_plug(config, alert)).flatten();
        for target in linkage.targets.iter().chain(own.as_ref()) {
            let action = linkage.action;
            if alert
                .actions
                .iter()
                .any(|a| a.action == action && &a.target == target)
            {
                continue;
            }
            let Some(device) = config.device(target) else {
                continue;
            };
            let message = linkage.message.clone();
            commands.push(command(device, linkage.action, alert, message.as_deref()));
            alert.actions.push(ActionRecord {
                action,
                target: target.clone(),
                sent_at: at,
                outcome: ActionOutcome::Pending,
                confirmed_at: None,
            });
        }
    }
    commands
}

/// The plug of the alert's source device: the device itself if it is a smart plug, else its
/// `plug` (an e-bike battery monitor's charger socket).
fn own_plug(config: &Config, alert: &Alert) -> Option<String> {
    let Source::Device(id) = &alert.source else {
        return None;
    };
    let source = config.device(id)?;
    match source.kind {
        DeviceKind::SmartPlug => Some(source.id.clone()),
        _ => source.plug.clone(),
    }
}

fn command(
    device: &Device,
    action: LinkageAction,
    alert: &Alert,
    message: Option<&str>,
) -> Command {
    let payload = match (device.format, action) {
        (PayloadFormat::Zigbee2mqtt, LinkageAction::CloseValve) => json!({"state": "OFF"}),
        (PayloadFormat::Zigbee2mqtt, LinkageAction::SoundSiren) => {
            json!({"warning": {"mode": "emergency", "duration": 600}})
        }
        (PayloadFormat::Zigbee2mqtt, LinkageAction::SwitchOff) => json!({"state": "OFF"}),
        (_, LinkageAction::CloseValve) => json!({"command": "close", "alert_id": alert.id}),
        (_, LinkageAction::SwitchOff) => json!({"command": "off", "alert_id": alert.id}),
        (_, LinkageAction::SoundSiren) => json!({"command": "on", "alert_id": alert.id}),
        (_, LinkageAction::PlayPa) => {
            let text = match message {
                Some(m) => json!({"zh-CN": m, "en": m}),
                None => json!({"zh-CN": format!("{} {}", alert.message.zh_cn, alert.advice.zh_cn),
                               "en": format!("{} {}", alert.message.en, alert.advice.en)}),
            };
            json!({"command": "play", "alert_id": alert.id, "message": text})
        }
    };
    Command {
        topic: device.command_topic(),
        payload: payload.to_string().into_bytes(),
    }
}

/// Whether an actuator state report confirms an action.
pub fn confirms(action: LinkageAction, state: &str) -> bool {
    let state = state.to_ascii_lowercase();
    match action {
        LinkageAction::CloseValve => matches!(state.as_str(), "closed" | "close" | "off"),
        LinkageAction::SoundSiren => matches!(state.as_str(), "on" | "sounding" | "alarm"),
        LinkageAction::PlayPa => matches!(state.as_str(), "playing" | "played" | "on"),
        LinkageAction::SwitchOff => state == "off",
    }
}

/// Marks pending actions on `target` confirmed by `state`; true if any changed.
pub fn confirm(alert: &mut Alert, target: &str, state: &str, at: DateTime<Utc>) -> bool {
    let mut changed = false;
    for a in alert
        .actions
        .iter_mut()
        .filter(|a| a.target == target && a.outcome == ActionOutcome::Pending)
    {
        if confirms(a.action, state) {
            a.outcome = ActionOutcome::Confirmed;
            a.confirmed_at = Some(at);
            changed = true;
        }
    }
    changed
}

/// Marks pending actions older than `timeout` timed out; true if any changed.
pub fn expire(alert: &mut Alert, timeout: chrono::Duration, at: DateTime<Utc>) -> bool {
    let mut changed = false;
    for a in alert
        .actions
        .iter_mut()
        .filter(|a| a.outcome == ActionOutcome::Pending)
    {
        if at.signed_duration_since(a.sent_at) >= timeout {
            a.outcome = ActionOutcome::TimedOut;
            changed = true;
        }
    }
    changed
}
