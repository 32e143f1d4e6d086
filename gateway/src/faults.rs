//! The fault reporter: turns the stages [`crate::supervise`] marks faulted into
//! `gateway_fault` alerts (source `gateway:<stage>`, red on the alarm path, orange otherwise)
//! and resolves them when the stage is healthy again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alerts::task::{AlertInput, Trigger};
use crate::alerts::{AlertBus, Location, Source};
use crate::supervise::{Health, Severity, StageHealth};
use edge_config::{AlertKind, Level};

/// How often the fault reporter re-checks even without a change (a raise the alert task
/// could not take at once is retried).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Turns faulted stages into `gateway_fault` alerts and resolves them when the stage is
/// healthy again, until `token` is cancelled. A raise the alert task cannot take at once (it
/// may be the faulted stage) is retried every [`REPORT_EVERY`]; the log and `status.json`
/// carry the fault meanwhile.
pub async fn run(health: Arc<Health>, alerts: AlertBus, token: CancellationToken) {
    let mut raised: BTreeMap<String, Level> = BTreeMap::new();
    loop {
        let snapshot = health.snapshot();
        for (name, stage) in &snapshot.stages {
            let level = stage.severity.level();
            let want = stage.faulted_since.is_some();
            let have = raised.get(name) == Some(&level);
            if want && !have {
                let input = fault_raise(name, stage);
                if alerts.try_send(input).is_ok() {
                    raised.insert(name.clone(), level);
                }
            } else if !want && raised.contains_key(name) {
                let input = Trigger::ResolveSource {
                    source: Source::Gateway(name.clone()),
                    kind: AlertKind::GatewayFault,
                    by: "gateway".to_owned(),
                };
                if alerts.try_send(input.into()).is_ok() {
                    raised.remove(name);
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => break,
            _ = health.changed.notified() => {}
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
}

fn fault_raise(name: &str, stage: &StageHealth) -> AlertInput {
    Trigger::Raise {
        source: Source::Gateway(name.to_owned()),
        location: Location {
            label: format!("gateway: {name}"),
            ..Location::default()
        },
        kind: AlertKind::GatewayFault,
        level: stage.severity.level(),
        readings: serde_json::json!({
            "stage": name,
            "alarm_path": stage.severity == Severity::AlarmPath,
            "error": stage.last_error,
            "restarts": stage.restarts,
        }),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[tokio::test(start_paused = true)]
    async fn the_fault_reporter_raises_red_for_the_alarm_path_and_resolves_on_recovery() {
        let health = Arc::new(Health::default());
        let (tx, mut rx) = mpsc::channel(8);
        let token = CancellationToken::new();
        tokio::spawn(run(health.clone(), AlertBus::new(tx), token.clone()));
        health.started("alerts", Severity::AlarmPath);
        health.failed("alerts", Severity::AlarmPath, "panicked: x");
        match rx.recv().await {
            Some(AlertInput::Trigger(Trigger::Raise {
                source,
                kind,
                level,
                ..
            })) => {
                assert_eq!(source, Source::Gateway("alerts".into()));
                assert_eq!((kind, level), (AlertKind::GatewayFault, Level::Red));
            }
            other => panic!("expected a raise, got {other:?}"),
        }
        health.recovered("alerts", Severity::AlarmPath);
        assert!(matches!(
            rx.recv().await,
            Some(AlertInput::Trigger(Trigger::ResolveSource {
                kind: AlertKind::GatewayFault,
                ..
            }))
        ));
        token.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_raise_the_alert_task_cannot_take_is_retried() {
        let health = Arc::new(Health::default());
        let (tx, mut rx) = mpsc::channel(1);
        tx.send(AlertInput::Tick).await.unwrap(); // the channel is full: a wedged alert task
        let token = CancellationToken::new();
        tokio::spawn(run(health.clone(), AlertBus::new(tx), token.clone()));
        health.failed("telemetry", Severity::Degraded, "stopped on its own");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(matches!(rx.recv().await, Some(AlertInput::Tick)));
        tokio::time::sleep(REPORT_EVERY * 2).await;
        assert!(matches!(
            rx.recv().await,
            Some(AlertInput::Trigger(Trigger::Raise {
                level: Level::Orange,
                ..
            }))
        ));
        token.cancel();
    }
}
