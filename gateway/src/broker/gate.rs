//! The commit gate: a sensor's QoS 1 PUBACK leaves the gateway only once its message is
//! committed.
//!
//! # Why
//!
//! rumqttd acknowledges a publish as soon as it has appended it to its in-memory log; ingest,
//! rules and the alert task's SQLite commit come after. A crash (`kill -9`, power cut) in
//! between lost an alarm the sensor believed delivered, so it never sent it again. With the
//! gate, the front (the only way into rumqttd) holds rumqttd's PUBACK (PUBREC for QoS 2) until
//! the alert task has committed everything that message caused: a sensor that got its PUBACK
//! can count on the alarm being on disk, and one that did not still has the message and sends
//! it again when it reconnects.
//!
//! # How a PUBACK is matched to a commit
//!
//! Every device log (one per device filter of ingest's device link, see `broker::local`)
//! numbers its messages 0, 1, 2, … in the order rumqttd appends them: the *offset* ingest
//! sees on each message. Every publish that reaches rumqttd comes through the front, so the
//! front counts, per log, the publishes it forwarded into it ([`CommitGate::forwarded`]).
//! When rumqttd's PUBACK for a message comes back, the message is in the log at an offset
//! below the count forwarded *by then* (everything appended before it was forwarded before
//! it, so before its PUBACK): that count is the message's threshold. Ingest passes each
//! message's offset down the same ordered path as its reading (ingest → rules → alert task);
//! the alert task, once everything before it is committed, raises the log's committed mark
//! to offset + 1 ([`CommitGate::commit`]). The PUBACK is released when the mark reaches the
//! threshold. Concurrent publishers on one log can only make a threshold later than needed,
//! never earlier; offsets are absolute, so messages rumqttd dropped (a log overrun) or a
//! re-attached link skipped only move the mark forward.
//!
//! PUBACKs leave in the order the publishes came (MQTT requires it): once one is held, every
//! later PUBACK on that connection waits behind it.
//!
//! # When nothing commits
//!
//! A held PUBACK is released after [`HOLD_MAX`] even without a commit, counted
//! (`acks_released_uncommitted`) and logged: a broken alarm path (the self-test reports it
//! as a fault) or a full disk then costs latency, never a sensor's whole in-flight window
//! (a sensor that stops sending would be deaf in a new way). The log's forwarded count is
//! then lowered to its committed mark, so that if the count was ever wrong (something
//! reached the log without the front counting it) later PUBACKs are not held up for good.
//!
//! A client's will is appended by rumqttd, not forwarded by the front: the front counts it
//! when the client's connection ends without a DISCONNECT, which is when rumqttd
//! publishes it.
//!
//! Not gated: topics outside the device logs (they have no reader that commits), and an
//! external broker (no front).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::local::TopicLogs;

/// Longest a PUBACK waits for its commit before it is released anyway.
pub const HOLD_MAX: Duration = Duration::from_secs(5);

/// Where one message of a device log stands: committed once the alert task marks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The log: index of its filter in the device link's filters.
    pub log: usize,
    /// The message's offset in that log.
    pub offset: u64,
}

/// Shared by the front (forwarded counts, held PUBACKs), ingest (which log a message is
/// from) and the alert task (commit marks). See the [module docs](self).
#[derive(Debug)]
pub struct CommitGate {
    logs: TopicLogs,
    /// Publishes the front forwarded into each log: atomics, bumped on the front's thread
    /// and read on it, never behind a lock that a commit could wait on.
    forwarded: Vec<AtomicU64>,
    /// Committed mark per log: every message below it is committed.
    committed: Vec<AtomicU64>,
    /// Bumped on every commit so held PUBACKs are looked at again (a `watch`: one send
    /// wakes every waiting connection, and a late subscriber misses nothing).
    changed: watch::Sender<u64>,
}

impl CommitGate {
    /// A gate over the logs of these filters (exact topics or `PREFIX/+`); `None` if any
    /// filter is another kind of wildcard (its log could not be told from a topic).
    pub fn new(filters: &[String]) -> Option<CommitGate> {
        let logs = TopicLogs::new(filters)?;
        let zeros = || (0..filters.len()).map(|_| AtomicU64::new(0)).collect();
        Some(CommitGate {
            logs,
            forwarded: zeros(),
            committed: zeros(),
            changed: watch::Sender::new(0),
        })
    }

    /// The log a publish on `topic` goes to, if it is gated (never for a topic with
    /// wildcards, which rumqttd does not append anywhere).
    pub fn log_of(&self, topic: &str) -> Option<usize> {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return None;
        }
        self.logs.log_of(topic)
    }

    /// Counts one publish forwarded into `log`.
    pub(super) fn forwarded(&self, log: usize) {
        if let Some(n) = self.forwarded.get(log) {
            n.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A PUBACK for a message of `log` just came from rumqttd: the mark it waits for.
    pub(super) fn threshold(&self, log: usize) -> u64 {
        self.forwarded
            .get(log)
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// A PUBACK of `log` waited [`HOLD_MAX`] for its commit: its forwarded count drops to
    /// the committed mark, so a count that ran ahead of the log cannot hold every later
    /// PUBACK of it for good (the alarm path is failing anyway when this runs).
    pub(super) fn resync(&self, log: usize) {
        if let (Some(f), Some(c)) = (self.forwarded.get(log), self.committed.get(log)) {
            f.fetch_min(c.load(Ordering::Acquire), Ordering::AcqRel);
        }
    }

    /// Whether every message of `log` below `threshold` is committed.
    pub(super) fn is_committed(&self, log: usize, threshold: u64) -> bool {
        self.committed
            .get(log)
            .is_none_or(|c| c.load(Ordering::Acquire) >= threshold)
    }

    /// Everything up to and including `mark` is committed (called by the alert task).
    pub fn commit(&self, mark: Mark) {
        if let Some(c) = self.committed.get(mark.log) {
            let before = c.fetch_max(mark.offset + 1, Ordering::AcqRel);
            if before <= mark.offset {
                self.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes when anything is committed.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> CommitGate {
        CommitGate::new(&["sensors/a/+".to_owned(), "legacy/gas".to_owned()]).unwrap()
    }

    #[test]
    fn a_puback_waits_for_every_message_forwarded_before_it_to_be_committed() {
        let g = gate();
        let log = g.log_of("sensors/a/state").unwrap();
        assert_eq!(g.log_of("sensors/a/heartbeat"), Some(log));
        assert_eq!(g.log_of("sensors/b/state"), None);
        assert_eq!(
            g.log_of("sensors/a/+"),
            None,
            "a wildcard is appended nowhere"
        );
        g.forwarded(log);
        g.forwarded(log);
        let threshold = g.threshold(log);
        assert_eq!(threshold, 2);
        assert!(!g.is_committed(log, threshold));
        g.commit(Mark { log, offset: 0 });
        assert!(
            !g.is_committed(log, threshold),
            "only the first is committed"
        );
        g.commit(Mark { log, offset: 1 });
        assert!(g.is_committed(log, threshold));
        g.commit(Mark { log, offset: 0 });
        assert!(g.is_committed(log, threshold), "a mark never goes back");
    }

    #[test]
    fn a_count_that_ran_ahead_of_its_log_is_lowered_after_a_timed_out_hold() {
        let g = gate();
        let log = g.log_of("legacy/gas").unwrap();
        for _ in 0..3 {
            g.forwarded(log);
        }
        g.commit(Mark { log, offset: 1 });
        assert!(
            !g.is_committed(log, g.threshold(log)),
            "one count too many, held"
        );
        g.resync(log);
        g.forwarded(log);
        g.commit(Mark { log, offset: 2 });
        assert!(
            g.is_committed(log, g.threshold(log)),
            "the next PUBACK is not held"
        );
    }

    #[test]
    fn a_commit_wakes_the_connections_waiting_on_the_gate() {
        let g = gate();
        let mut rx = g.subscribe();
        assert!(!rx.has_changed().unwrap());
        g.commit(Mark { log: 1, offset: 4 });
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        g.commit(Mark { log: 1, offset: 2 });
        assert!(!rx.has_changed().unwrap(), "nothing new: no wake-up");
        g.commit(Mark { log: 9, offset: 2 });
        assert!(!rx.has_changed().unwrap(), "not a log of this gate");
    }
}
