//! Staff resolves reach the rules.
//!
//! The rules only emit edges, so a condition the rules still hold active after its alert was
//! resolved by hand would stay silent for good: readings at the same level change nothing.
//! The alert task therefore tells the rules stage of every staff resolve of a device's alert
//! through a small bounded channel ([`channel`]), and the engine resets that (device, kind)
//! condition ([`super::Engine`] applies waiting resets before each reading and tick):
//!
//! - the sensor still reports the hazard (its condition is active): a **new alert** is raised
//!   at once from its latest reading, and then follows the sensor (updates, clears);
//! - the sensor reads normal (the clear-hold was running) or nothing is pending: the condition
//!   is forgotten, so the next hazard reading raises a new alert.
//!
//! The channel also carries, the other way, which conditions the sensors currently report
//! ([`ResetSender::still_reported`]): the alert task reads it when it records a staff resolve,
//! to decide whether residents may be told all-clear (see [`crate::residents`]). A reading
//! can slip in between that read and the reset; [`RuleReset::still_reported`] carries what
//! the alert task decided, and the engine keeps its word: if residents were not told
//! all-clear, a new alert always follows, and only the sensor ends it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use edge_config::{AlertKind, Level};
use tokio::sync::mpsc;

/// Resets in flight between the alert task and the rules stage. Staff act at human pace;
/// beyond this the sender keeps them itself (see [`ResetSender::send`]).
pub const RESETS_CAPACITY: usize = 64;

/// A staff member resolved the active alert of (device, kind) by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleReset {
    /// The device's id (not its index: a config reload may renumber devices while the
    /// reset is on its way).
    pub device: String,
    pub kind: AlertKind,
    /// The level of the resolved alert.
    pub level: Level,
    /// Whether the sensor still reported the condition when the alert was resolved, as the
    /// alert task saw it: residents were then not told all-clear, so a new alert must follow.
    pub still_reported: bool,
}

/// The (device, kind) conditions whose sensor currently reports the hazard.
#[derive(Debug, Default)]
struct Reporting(Mutex<HashSet<(String, AlertKind)>>);

impl Reporting {
    /// The set; a panic elsewhere while holding the lock leaves a set still worth reading.
    fn lock(&self) -> MutexGuard<'_, HashSet<(String, AlertKind)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The alert task's end: sends resets, reads what the sensors report.
#[derive(Debug)]
pub struct ResetSender {
    tx: mpsc::Sender<RuleReset>,
    /// Resets the channel had no room for, oldest first. Never dropped and never waited on:
    /// the alert task must not block on the rules stage, which may itself be waiting for the
    /// alert task's input channel.
    waiting: VecDeque<RuleReset>,
    /// Written by the engine, read here when a staff resolve is recorded.
    reporting: Arc<Reporting>,
}

/// The rules stage's end: receives resets, records what the sensors report.
#[derive(Debug)]
pub struct ResetReceiver {
    rx: mpsc::Receiver<RuleReset>,
    reporting: Arc<Reporting>,
}

/// A bounded reset channel of [`RESETS_CAPACITY`] with its shared view of the sensors.
pub fn channel() -> (ResetSender, ResetReceiver) {
    let (tx, rx) = mpsc::channel(RESETS_CAPACITY);
    let reporting = Arc::new(Reporting::default());
    (
        ResetSender {
            tx,
            waiting: VecDeque::new(),
            reporting: reporting.clone(),
        },
        ResetReceiver { rx, reporting },
    )
}

impl ResetSender {
    /// Another sender on the same channel and view, with nothing waiting (for an alert task
    /// restarted by its supervisor).
    pub fn handle(&self) -> ResetSender {
        ResetSender {
            tx: self.tx.clone(),
            waiting: VecDeque::new(),
            reporting: self.reporting.clone(),
        }
    }

    /// Whether the sensor of `device` currently reports `kind` (its condition is active or
    /// pending in the rules).
    pub fn still_reported(&self, device: &str, kind: AlertKind) -> bool {
        self.reporting.lock().contains(&(device.to_owned(), kind))
    }

    /// Sends `reset` after any that wait; keeps it if the channel is full.
    pub fn send(&mut self, reset: RuleReset) {
        self.waiting.push_back(reset);
        self.flush();
    }

    /// Hands waiting resets to the channel, in order, until it is full.
    pub fn flush(&mut self) {
        while let Some(reset) = self.waiting.front().cloned() {
            match self.tx.try_send(reset) {
                Ok(()) => {
                    self.waiting.pop_front();
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        waiting = self.waiting.len(),
                        "rule resets wait for the rules stage"
                    );
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // The rules stage has stopped (shutdown): nothing left to reset.
                    self.waiting.clear();
                    break;
                }
            }
        }
    }

    /// Resets not yet handed to the channel.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

impl ResetReceiver {
    /// The next reset, if one waits.
    pub fn try_recv(&mut self) -> Option<RuleReset> {
        self.rx.try_recv().ok()
    }

    /// Records whether the sensor of `device` reports `kind` now.
    pub fn set_reporting(&self, device: &str, kind: AlertKind, on: bool) {
        let mut set = self.reporting.lock();
        if on {
            set.insert((device.to_owned(), kind));
        } else {
            set.remove(&(device.to_owned(), kind));
        }
    }

    /// Forgets what was recorded of devices outside `keep` (removed by a config reload).
    pub fn retain_devices(&self, keep: &std::collections::HashSet<&str>) {
        self.reporting
            .lock()
            .retain(|(device, _)| keep.contains(device.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(device: usize) -> RuleReset {
        RuleReset {
            device: device.to_string(),
            kind: AlertKind::Gas,
            level: Level::Red,
            still_reported: false,
        }
    }

    #[test]
    fn resets_beyond_the_channel_wait_in_order_and_none_is_lost() {
        let (mut tx, mut rx) = channel();
        for i in 0..RESETS_CAPACITY + 10 {
            tx.send(reset(i));
        }
        assert_eq!(tx.waiting(), 10);
        let mut got = Vec::new();
        while let Some(r) = rx.try_recv() {
            got.push(r.device.parse::<usize>().unwrap());
        }
        tx.flush();
        assert_eq!(tx.waiting(), 0);
        while let Some(r) = rx.try_recv() {
            got.push(r.device.parse::<usize>().unwrap());
        }
        assert_eq!(got, (0..RESETS_CAPACITY + 10).collect::<Vec<_>>());
    }

    #[test]
    fn the_sender_sees_what_the_rules_record_and_a_stopped_rules_stage_drops_resets() {
        let (mut tx, rx) = channel();
        rx.set_reporting("3", AlertKind::Gas, true);
        assert!(tx.still_reported("3", AlertKind::Gas));
        assert!(!tx.still_reported("3", AlertKind::Smoke));
        rx.set_reporting("3", AlertKind::Gas, false);
        assert!(!tx.still_reported("3", AlertKind::Gas));
        drop(rx);
        tx.send(reset(1));
        assert_eq!(tx.waiting(), 0);
    }
}
