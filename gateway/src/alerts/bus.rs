//! The alert bus: the one way into the alert task.
//!
//! Rules, cameras, the console, the uplink (platform acks, `buffer_full`) and the fault
//! reporter all change alerts, and only the alert task may (it is the single writer of alert
//! events). They hold an [`AlertBus`] — a typed handle over the alert task's bounded queue —
//! instead of a raw channel of [`AlertInput`]: each producer says what it wants (`raise`,
//! `resolve_source`, `acknowledge`, `resolve`) and gets a typed answer. The back edges into
//! the alert task are named here, so the pipeline still reads one way:
//!
//! ```text
//! rules ─┐
//! video ─┤                     ┌─ console (acknowledge / resolve)
//!        ├─▶ AlertBus ─▶ alert task ◀─┤
//! faults ┘                     └─ uplink (platform ack, buffer_full)
//! ```

use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::lifecycle::LifecycleError;
use super::model::Alert;
use super::task::AlertInput;

/// How long a staff or platform action waits for the alert task's answer.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the bus did not take an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The alert task has stopped (shutdown).
    #[error("the alert task has stopped")]
    Closed,
    /// The queue is full right now (only from the non-waiting `try_` calls).
    #[error("the alert task's queue is full")]
    Full,
}

/// Why a staff or platform action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The action never reached the alert task, or got no answer in time.
    #[error("alert task unavailable: {0}")]
    Unavailable(&'static str),
    /// The alert task refused it (unknown alert, already resolved, storage fault).
    #[error(transparent)]
    Refused(#[from] LifecycleError),
}

/// A typed handle on the alert task's input queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertBus {
    tx: mpsc::Sender<AlertInput>,
}

/// A handle that does not keep the alert task alive (see [`AlertBus::downgrade`]).
#[derive(Debug, Clone)]
pub struct WeakAlertBus {
    tx: mpsc::WeakSender<AlertInput>,
}

impl WeakAlertBus {
    /// The bus, if the alert task still runs.
    pub fn upgrade(&self) -> Option<AlertBus> {
        self.tx.upgrade().map(|tx| AlertBus { tx })
    }
}

impl AlertBus {
    /// A bus over the alert task's queue (its receiving end goes to the task).
    pub fn new(tx: mpsc::Sender<AlertInput>) -> Self {
        AlertBus { tx }
    }

    /// A handle that lets the alert task stop when every strong handle is gone (for
    /// producers that live through shutdown, such as the uplink).
    pub fn downgrade(&self) -> WeakAlertBus {
        WeakAlertBus {
            tx: self.tx.downgrade(),
        }
    }

    /// Sends any input, waiting for room.
    pub async fn send(&self, input: AlertInput) -> Result<(), BusError> {
        self.tx.send(input).await.map_err(|_| BusError::Closed)
    }

    /// Sends any input without waiting.
    pub fn try_send(&self, input: AlertInput) -> Result<(), BusError> {
        self.tx.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BusError::Full,
            mpsc::error::TrySendError::Closed(_) => BusError::Closed,
        })
    }

    /// Sends any input from a blocking thread (cameras), waiting for room.
    pub fn blocking_send(&self, input: AlertInput) -> Result<(), BusError> {
        self.tx.blocking_send(input).map_err(|_| BusError::Closed)
    }

    /// A staff member or the platform acknowledges alert `id`.
    pub async fn acknowledge(&self, id: String, by: String) -> Result<Alert, ActionError> {
        self.act(|reply| AlertInput::Acknowledge { id, by, reply })
            .await
    }

    /// Staff at a street station acknowledge compound alert `id`: sent back to its compound;
    /// the compound's id, or why not.
    pub async fn remote_acknowledge(&self, id: String, by: String) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.send(AlertInput::RemoteAck { id, by, reply })
            .await
            .map_err(|_| "the alert task has stopped".to_owned())?;
        match tokio::time::timeout(ACTION_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the alert task dropped the action".to_owned()),
            Err(_) => Err("no answer from the alert task in time".to_owned()),
        }
    }

    /// A staff member resolves alert `id`.
    pub async fn resolve(&self, id: String, by: String) -> Result<Alert, ActionError> {
        self.act(|reply| AlertInput::Resolve { id, by, reply })
            .await
    }

    async fn act(
        &self,
        input: impl FnOnce(oneshot::Sender<Result<Alert, LifecycleError>>) -> AlertInput,
    ) -> Result<Alert, ActionError> {
        let (reply, answer) = oneshot::channel();
        self.send(input(reply))
            .await
            .map_err(|_| ActionError::Unavailable("the alert task has stopped"))?;
        match tokio::time::timeout(ACTION_TIMEOUT, answer).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(_)) => Err(ActionError::Unavailable(
                "the alert task dropped the action",
            )),
            Err(_) => Err(ActionError::Unavailable(
                "no answer from the alert task in time",
            )),
        }
    }
}

/// Where committed alert events can be subscribed to (console, residents, benches), without
/// keeping the event channel open: it closes when the alert task — its only strong sender —
/// has stopped, which is what ends the publishers downstream of it on shutdown.
#[derive(Debug, Clone)]
pub struct EventFeed {
    tx: broadcast::WeakSender<Alert>,
}

impl EventFeed {
    /// A feed of the events `tx` carries (the caller keeps or drops the strong sender).
    pub fn new(tx: &broadcast::Sender<Alert>) -> Self {
        EventFeed { tx: tx.downgrade() }
    }

    /// Every event committed from now on; an already closed receiver once the alert task has
    /// stopped.
    pub fn subscribe(&self) -> broadcast::Receiver<Alert> {
        match self.tx.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_action_gets_the_alert_tasks_typed_answer() {
        let (tx, mut rx) = mpsc::channel(4);
        let bus = AlertBus::new(tx);
        let task = tokio::spawn(async move {
            match rx.recv().await {
                Some(AlertInput::Acknowledge { id, reply, .. }) => {
                    let _ = reply.send(Err(LifecycleError::NotFound(id)));
                }
                other => panic!("expected an acknowledge, got {other:?}"),
            }
        });
        let err = bus
            .acknowledge("x".into(), "duty".into())
            .await
            .unwrap_err();
        assert!(matches!(err, ActionError::Refused(LifecycleError::NotFound(id)) if id == "x"));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_stopped_alert_task_is_unavailable_not_a_hang() {
        let (tx, rx) = mpsc::channel(4);
        let bus = AlertBus::new(tx);
        drop(rx);
        let err = bus.resolve("x".into(), "duty".into()).await.unwrap_err();
        assert!(matches!(err, ActionError::Unavailable(_)));
        assert_eq!(bus.try_send(AlertInput::Tick), Err(BusError::Closed));
        let weak = bus.downgrade();
        drop(bus);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test]
    async fn an_event_feed_does_not_keep_the_events_open_after_the_alert_task() {
        let (tx, _) = broadcast::channel::<Alert>(4);
        let feed = EventFeed::new(&tx);
        let mut live = feed.subscribe();
        drop(tx);
        assert!(matches!(
            live.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        assert!(matches!(
            feed.subscribe().recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }
}
