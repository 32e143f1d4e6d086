//! The alert task: owns the [`Lifecycle`] (and so the database writer) on a thread of its
//! own, because SQLite commits block. It drains its input channel until every sender is
//! gone, so on shutdown it finishes what the rules already decided before it stops.

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::lifecycle::{Lifecycle, LifecycleError};
use super::model::{Alert, Location, Source};
use crate::rules::Signal;
use edge_config::{AlertKind, Level};

/// What the alert task is asked to do.
#[derive(Debug)]
pub enum AlertInput {
    /// A rule edge.
    Signal(Signal),
    /// Advance escalation timers.
    Tick,
    /// Staff or platform acknowledgement.
    Acknowledge {
        id: String,
        by: String,
        reply: oneshot::Sender<Result<Alert, String>>,
    },
    /// Staff resolution.
    Resolve {
        id: String,
        by: String,
        reply: oneshot::Sender<Result<Alert, String>>,
    },
    /// A gateway-originated condition (e.g. `buffer_full` from the uplink): raise it, or
    /// update the active alert of the same (source, kind).
    Raise {
        source: Source,
        location: Location,
        kind: AlertKind,
        level: Level,
        readings: serde_json::Value,
    },
    /// A gateway-originated condition is over: resolve its active alert, if any.
    ResolveSource {
        source: Source,
        kind: AlertKind,
        by: String,
    },
    /// An actuator reported its state (confirms linkage actions).
    ActuatorState { device: String, state: String },
}

/// Runs until `inputs` is closed. Every committed alert event is sent on `published`.
pub fn run(
    mut lifecycle: Lifecycle,
    mut inputs: mpsc::Receiver<AlertInput>,
    published: broadcast::Sender<Alert>,
) {
    while let Some(input) = inputs.blocking_recv() {
        let at = Utc::now();
        let committed: Result<Vec<Alert>, String> = match input {
            AlertInput::Signal(s) => lifecycle
                .on_signal(&s, at)
                .map(|a| a.into_iter().collect())
                .map_err(|e| e.to_string()),
            AlertInput::Tick => lifecycle.on_tick(at).map_err(|e| e.to_string()),
            AlertInput::Acknowledge { id, by, reply } => {
                answer(lifecycle.acknowledge(&id, &by, at), reply)
            }
            AlertInput::Resolve { id, by, reply } => answer(lifecycle.resolve(&id, &by, at), reply),
            AlertInput::Raise {
                source,
                location,
                kind,
                level,
                readings,
            } => lifecycle
                .raise_or_update(source, location, kind, level, readings, at)
                .map(|a| vec![a])
                .map_err(|e| e.to_string()),
            AlertInput::ResolveSource { source, kind, by } => lifecycle
                .resolve_source(&source, kind, &by, at)
                .map(|a| a.into_iter().collect())
                .map_err(|e| e.to_string()),
            AlertInput::ActuatorState { device, state } => lifecycle
                .on_actuator_state(&device, &state, at)
                .map_err(|e| e.to_string()),
        };
        match committed {
            Ok(alerts) => {
                for alert in alerts {
                    tracing::info!(
                        id = %alert.id, seq = alert.seq, kind = %alert.kind, level = %alert.level.as_str(),
                        event = alert.event.as_str(), source = %alert.source.key(), "alert"
                    );
                    // No receiver (nobody subscribed yet) is fine: the store has it.
                    let _ = published.send(alert);
                }
            }
            // The store refused: the event is not recorded. Loud, but keep serving others.
            Err(e) => tracing::error!(error = %e, "alert could not be recorded"),
        }
    }
    tracing::info!("alert task stopped");
}

fn answer(
    result: Result<Alert, LifecycleError>,
    reply: oneshot::Sender<Result<Alert, String>>,
) -> Result<Vec<Alert>, String> {
    let out = result.map_err(|e| e.to_string());
    let _ = reply.send(out.clone());
    out.map(|a| vec![a])
}
