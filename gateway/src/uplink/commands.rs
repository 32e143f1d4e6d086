//! Commands from the platform: `{prefix}/{site}/commands/ack`.

use serde::Deserialize;

use crate::alerts::bus::ActionError;
use crate::alerts::lifecycle::LifecycleError;
use crate::alerts::WeakAlertBus;

/// `{"id":"<alert id>","by":"<who>"}`: acknowledge an alert remotely.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AckCommand {
    pub id: String,
    /// Who acknowledged it on the platform; `platform` when absent.
    #[serde(default = "default_by")]
    pub by: String,
}

fn default_by() -> String {
    "platform".to_owned()
}

/// Parses an ack command payload. The error says what is wrong, for the log.
pub fn parse_ack(payload: &[u8]) -> Result<AckCommand, String> {
    let cmd: AckCommand = serde_json::from_slice(payload)
        .map_err(|e| format!("expected {{\"id\":\"<alert id>\",\"by\":\"<who>\"}}: {e}"))?;
    if cmd.id.trim().is_empty() {
        return Err("\"id\" is empty".to_owned());
    }
    if cmd.by.trim().is_empty() {
        return Err("\"by\" is empty".to_owned());
    }
    Ok(cmd)
}

/// Applies an ack command through the alert task and logs the outcome. Never blocks the
/// caller (the MQTT event loop): the reply is awaited on its own task.
pub fn apply_ack(bus: Option<&WeakAlertBus>, topic: &str, payload: &[u8]) {
    let cmd = match parse_ack(payload) {
        Ok(cmd) => cmd,
        Err(why) => {
            tracing::warn!(topic, error = %why, "upstream command ignored");
            return;
        }
    };
    let Some(bus) = bus.and_then(WeakAlertBus::upgrade) else {
        tracing::warn!(topic, id = %cmd.id, "upstream command ignored: the alert task has stopped");
        return;
    };
    tokio::spawn(async move {
        match bus.acknowledge(cmd.id.clone(), cmd.by.clone()).await {
            Ok(alert) => tracing::info!(
                id = %alert.id, by = %cmd.by, seq = alert.seq, "upstream ack applied"
            ),
            Err(ActionError::Refused(e @ LifecycleError::Store(_))) => {
                tracing::error!(id = %cmd.id, error = %e, "upstream ack not recorded")
            }
            Err(ActionError::Refused(e)) => {
                tracing::warn!(id = %cmd.id, error = %e, "upstream ack rejected")
            }
            Err(e @ ActionError::Unavailable(_)) => {
                tracing::warn!(id = %cmd.id, error = %e, "upstream ack not applied")
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_command_names_the_alert_and_who_acknowledged_it() {
        let cmd = parse_ack(br#"{"id":"01J0ABC","by":"duty-officer-7"}"#).unwrap();
        assert_eq!(
            cmd,
            AckCommand {
                id: "01J0ABC".into(),
                by: "duty-officer-7".into()
            }
        );
        let anonymous = parse_ack(br#"{"id":"01J0ABC"}"#).unwrap();
        assert_eq!(anonymous.by, "platform");
    }

    #[test]
    fn malformed_ack_commands_are_refused_with_a_reason() {
        assert!(parse_ack(b"ack 01J0ABC").unwrap_err().contains("expected"));
        assert!(parse_ack(br#"{"id":"  "}"#).unwrap_err().contains("id"));
        assert!(parse_ack(br#"{"by":"x"}"#).is_err());
    }
}
