//! The alert task: owns the [`Lifecycle`] (and so the database writer) on a thread of its
//! own, because SQLite commits block. It runs until its stop token is cancelled (see
//! [`run`]), then drains what is already queued, so on shutdown it finishes what the rules
//! already decided before it stops. Producers that outlive it (the console, cameras, the
//! uplink) do not keep it alive: their sends fail with [`super::bus::BusError::Closed`].
//!
//! # When the database refuses a write
//!
//! A full disk, an I/O error or a lock held too long makes a commit fail. On a full
//! disk the task first gives up the disk reserve ([`crate::reserve`]) and retries at
//! once, which normally settles it. An alert is published only once it is committed, so
//! an event that still fails is not dropped but *deferred*: kept in memory, in arrival
//! order, with the time it arrived, and retried before every later event and on every
//! tick (once a second), so a smoke alarm raised while the disk was full is recorded,
//! published and forwarded as soon as space is back — with its original `raised_at`.
//! The rules only emit edges, so dropping one would leave the alarm unraised for good.
//! At most [`MAX_DEFERRED`] events wait; beyond that new ones are dropped, counted and
//! logged. Staff actions (acknowledge, resolve) are not deferred: their caller gets the
//! error. Counts go to [`AlertTaskStats`] (`status.json`, `gateway status`).
//!
//! # Commit marks
//!
//! After each message of a device log, ingest sends its [`Mark`] down the same path as its
//! reading ([`AlertInput::Handled`]). Whatever the reading caused came before it and is
//! committed by then, so the task tells the broker's [`CommitGate`], which releases the
//! sensor's PUBACK. While events are deferred, marks wait too (the newest per log) and are
//! given once the deferred events are committed: a PUBACK never says more than the disk has.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{Lifecycle, LifecycleError, PartialCommit};
use super::model::{Alert, Location, Source};
use super::store::StoreError;
use crate::broker::{CommitGate, Mark};
use crate::reserve::{is_disk_trouble, Reserve};
use crate::rules::Signal;
use crate::selftest::{Probe, SelfTest};
use crate::supervise::fault_point_blocking;
use edge_config::{AlertKind, Level};

/// What the alert task is asked to do.
#[derive(Debug)]
pub enum AlertInput {
    /// Something that changes alerts on its own; deferred and retried if the database
    /// refuses it.
    Trigger(Trigger),
    /// Advance escalation timers.
    Tick,
    /// Staff or platform acknowledgement.
    Acknowledge {
        id: String,
        by: String,
        reply: oneshot::Sender<Result<Alert, LifecycleError>>,
    },
    /// Staff resolution (resets the device's rule condition: see [`super::lifecycle`]).
    Resolve {
        id: String,
        by: String,
        reply: oneshot::Sender<Result<Alert, LifecycleError>>,
    },
    /// A self-test probe: committed, never turned into an alert (see [`crate::selftest`]).
    Probe(Probe),
    /// Everything a device-log message caused is in (see "Commit marks" above).
    Handled(Mark),
    /// The configuration was reloaded; signals after this carry its device indexes. The
    /// alerts of devices and cameras it no longer has are resolved (see [`crate::reload`]).
    Reload(Arc<edge_config::Config>),
    /// A compound's alert event or heartbeat (street station; see [`super::remote`]).
    Remote(crate::reading::Remote),
    /// Staff at the station acknowledge a compound's alert: the acknowledgement goes back
    /// to the compound (`shouwang/{compound}/commands/ack`), whose next event shows it.
    /// Replies with the compound's id.
    RemoteAck {
        id: String,
        by: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// An input that changes alerts without a person behind it, so it can wait and be retried.
#[derive(Debug)]
pub enum Trigger {
    /// A rule edge.
    Signal(Signal),
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
    /// A compound's alert event, checked, to store (street station).
    RemoteAlert {
        compound: String,
        event: super::remote::RemoteEvent,
    },
    /// A compound's heartbeat, to show its link's figures at the station.
    RemoteHeartbeat {
        compound: String,
        body: serde_json::Value,
    },
    /// Evidence gathered for an alert after its commit (the snapshot and clip of the cameras
    /// that see a sensor, see `video::linked`): merged into its readings if it is still
    /// active; nothing else about it changes.
    AttachEvidence {
        id: String,
        evidence: serde_json::Map<String, serde_json::Value>,
    },
}

impl From<Trigger> for AlertInput {
    fn from(trigger: Trigger) -> Self {
        AlertInput::Trigger(trigger)
    }
}

/// How many events may wait for a database that refuses writes before new ones are dropped.
pub const MAX_DEFERRED: usize = 10_000;

/// How often a continuing database failure is logged again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The alert task's dealings with the database, shared with housekeeping (`status.json`).
#[derive(Debug, Default)]
pub struct AlertTaskStats {
    /// Events waiting for the database right now.
    deferred: AtomicU64,
    failures_total: AtomicU64,
    dropped_total: AtomicU64,
    /// Compound alert events refused as malformed (street station).
    pub remote_rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`AlertTaskStats`], as `status.json` carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertStoreSnapshot {
    /// Alert events not yet recorded because the database refused them (retried every second).
    pub deferred: u64,
    /// Commits that failed since start.
    pub failures_total: u64,
    /// Events dropped because [`MAX_DEFERRED`] were already waiting.
    pub dropped_total: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

impl AlertTaskStats {
    pub fn snapshot(&self) -> AlertStoreSnapshot {
        // Acquire pairs with the Release in `count_deferred`: whoever sees events waiting
        // also sees the failure that made them wait.
        AlertStoreSnapshot {
            deferred: self.deferred.load(Ordering::Acquire),
            failures_total: self.failures_total.load(Ordering::Relaxed),
            dropped_total: self.dropped_total.load(Ordering::Relaxed),
            last_error: self.last_error.lock().map_or(None, |e| e.clone()),
        }
    }

    fn failed(&self, error: &str) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_owned());
        }
    }
}

/// The alert task's state: the lifecycle, where committed events go, and what waits.
pub struct AlertTask {
    lifecycle: Lifecycle,
    published: broadcast::Sender<Alert>,
    /// Events the database refused, oldest first, with their arrival time. Retried before
    /// anything newer so that alert `seq` keeps arrival order.
    deferred: VecDeque<(Trigger, DateTime<Utc>)>,
    stats: Arc<AlertTaskStats>,
    /// When the current run of failures was last logged (`None`: the database is fine).
    failing_since_log: Option<Instant>,
    /// Disk space to give up when the database refuses a write (see [`crate::reserve`]).
    reserve: Option<Arc<Reserve>>,
    /// Told of each probe committed, which completes a self-test round trip.
    self_test: Option<Arc<SelfTest>>,
    /// Told of each device-log message whose consequences are committed.
    gate: Option<Arc<CommitGate>>,
    /// Marks held back while events are deferred: the newest per log (so bounded by the
    /// number of devices however long the database refuses writes).
    waiting_marks: HashMap<usize, Mark>,
    /// The configuration in force, shared with the supervisor: a task restarted after a
    /// reload must start on the reloaded configuration, not the one of the process start.
    config: Option<Arc<std::sync::Mutex<Arc<edge_config::Config>>>>,
    /// When each compound was last heard (street station).
    liveness: super::remote::Liveness,
}

/// Why an alert was resolved because a reload removed its source.
pub const REMOVED_BY_RELOAD: &str = "config reload: no longer configured";

/// Runs `task` until `stop` is cancelled, then handles what is already queued at that
/// moment and returns, whether or not senders are still alive. Every committed alert event is
/// published. The receiver is borrowed: after a panic its supervisor starts a new task on the
/// same queue. When every sender is gone before the stop, nothing more can arrive: it waits
/// for the stop (returning early would look like a crash to its supervisor).
///
/// Blocks its thread (a SQLite writer must not run on the async workers); needs no runtime.
pub fn run(mut task: AlertTask, inputs: &mut mpsc::Receiver<AlertInput>, stop: &CancellationToken) {
    while let Some(input) = next_input(inputs, stop) {
        task.handle(input, Utc::now());
        fault_point_blocking("alerts");
    }
    let queued = inputs.len();
    for input in std::iter::from_fn(|| inputs.try_recv().ok()).take(queued) {
        task.handle(input, Utc::now());
    }
    task.retry_deferred();
    if !task.deferred.is_empty() {
        tracing::error!(
            lost = task.deferred.len(),
            "alert task stopped with alert events the database never accepted"
        );
    }
    tracing::info!(drained = queued, "alert task stopped");
}

/// The next input, or `None` once `stop` is cancelled (inputs still queued stay queued).
fn next_input(
    inputs: &mut mpsc::Receiver<AlertInput>,
    stop: &CancellationToken,
) -> Option<AlertInput> {
    if stop.is_cancelled() {
        return None;
    }
    match inputs.try_recv() {
        Ok(input) => return Some(input),
        Err(mpsc::error::TryRecvError::Empty) => {}
        Err(mpsc::error::TryRecvError::Disconnected) => {
            block_on(stop.cancelled());
            return None;
        }
    }
    let received = block_on(async {
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            input = inputs.recv() => Some(input),
        }
    });
    match received {
        Some(Some(input)) => Some(input),
        Some(None) => {
            block_on(stop.cancelled());
            None
        }
        None => None,
    }
}

/// Drives `future` to completion on this thread (parking it while the future waits). The
/// channel and token futures it is used with need no runtime, so the task also runs on a
/// plain thread.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = std::pin::pin!(future);
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

impl AlertTask {
    pub fn new(
        lifecycle: Lifecycle,
        published: broadcast::Sender<Alert>,
        stats: Arc<AlertTaskStats>,
    ) -> Self {
        let lifecycle_config = &lifecycle.config().clone();
        AlertTask {
            lifecycle,
            published,
            deferred: VecDeque::new(),
            stats,
            failing_since_log: None,
            reserve: None,
            self_test: None,
            gate: None,
            waiting_marks: HashMap::new(),
            config: None,
            liveness: super::remote::Liveness::new(lifecycle_config, Utc::now()),
        }
    }

    /// Keeps `cell` up to date with the configuration in force (see [`AlertInput::Reload`]).
    pub fn with_config_cell(
        mut self,
        cell: Arc<std::sync::Mutex<Arc<edge_config::Config>>>,
    ) -> Self {
        self.config = Some(cell);
        self
    }

    /// Tells `gate` of every device-log message whose consequences are committed.
    pub fn with_commit_gate(mut self, gate: Option<Arc<CommitGate>>) -> Self {
        self.gate = gate;
        self
    }

    fn handled(&mut self, mark: Mark) {
        let Some(gate) = &self.gate else {
            return;
        };
        if self.deferred.is_empty() {
            gate.commit(mark);
        } else {
            self.waiting_marks.insert(mark.log, mark);
        }
    }

    /// Gives the marks held back while events were deferred, once none are.
    fn give_waiting_marks(&mut self) {
        if let (Some(gate), true) = (&self.gate, self.deferred.is_empty()) {
            for (_, mark) in self.waiting_marks.drain() {
                gate.commit(mark);
            }
        }
    }

    /// Completes this self-test's round trips when their probes are committed.
    pub fn with_self_test(mut self, self_test: Option<Arc<SelfTest>>) -> Self {
        self.self_test = self_test;
        self
    }

    fn probe(&mut self, probe: Probe) {
        match self.lifecycle.record_probe(probe.nonce) {
            Ok(()) => {
                if let Some(st) = &self.self_test {
                    st.completed(probe.nonce, tokio::time::Instant::now());
                }
            }
            // Not completed: the self-test's timeout turns this into a fault.
            Err(e) => tracing::warn!(error = %e, "self-test probe not committed"),
        }
    }

    /// Gives the task a disk reserve to release when the database refuses a write.
    pub fn with_reserve(mut self, reserve: Option<Arc<Reserve>>) -> Self {
        self.reserve = reserve;
        self
    }

    /// Releases the disk reserve if `error` is a full disk and there still is one: `true`
    /// means retry now.
    fn release_reserve(&self, error: &StoreError) -> bool {
        is_disk_trouble(error)
            && self
                .reserve
                .as_ref()
                .is_some_and(|r| r.release("recording alert events"))
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Events waiting for the database.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// Handles one input that arrived at `at`.
    pub fn handle(&mut self, input: AlertInput, at: DateTime<Utc>) {
        let trigger = match input {
            AlertInput::Trigger(trigger) => trigger,
            AlertInput::Tick => return self.tick(at),
            AlertInput::Probe(probe) => return self.probe(probe),
            AlertInput::Handled(mark) => return self.handled(mark),
            AlertInput::Reload(config) => return self.reload(config, at),
            AlertInput::Remote(remote) => return self.remote(remote, at),
            AlertInput::RemoteAck { id, by, reply } => {
                let _ = reply.send(self.remote_ack(&id, &by));
                return;
            }
            AlertInput::Acknowledge { id, by, reply } => {
                let result = self.lifecycle.acknowledge(&id, &by, at);
                return self.reply(result, reply);
            }
            AlertInput::Resolve { id, by, reply } => {
                let result = self.lifecycle.resolve(&id, &by, at);
                return self.reply(result, reply);
            }
        };
        self.defer(trigger, at);
        self.retry_deferred();
    }

    /// Switches the lifecycle to a reloaded configuration and resolves the alerts of what it
    /// removed, in order with every other event.
    fn reload(&mut self, config: Arc<edge_config::Config>, at: DateTime<Utc>) {
        if let Some(cell) = &self.config {
            *cell.lock().unwrap_or_else(|e| e.into_inner()) = config.clone();
        }
        for (source, kind) in self.lifecycle.reconfigure(config) {
            tracing::info!(source = %source.key(), kind = %kind, "alert resolved: its source left the configuration");
            let by = REMOVED_BY_RELOAD.to_owned();
            self.defer(Trigger::ResolveSource { source, kind, by }, at);
        }
        self.retry_deferred();
    }

    /// A compound's message: it is alive; an alert event is stored (in order with every
    /// other event, retried like them while the database refuses writes).
    fn remote(&mut self, r: crate::reading::Remote, at: DateTime<Utc>) {
        use super::remote::{LivenessChange, RemoteEvent};
        if let Some(LivenessChange::Heard { compound }) = self.liveness.heard(&r.compound, at) {
            tracing::info!(compound = %compound, "compound heard again");
            let by = "compound heard again".to_owned();
            let source = super::remote::offline_source(&compound);
            let kind = AlertKind::CompoundOffline;
            self.defer(Trigger::ResolveSource { source, kind, by }, at);
        }
        if r.kind == crate::reading::RemoteKind::Heartbeat {
            let body = serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null);
            let compound = r.compound.clone();
            self.defer(Trigger::RemoteHeartbeat { compound, body }, at);
        }
        if r.kind == crate::reading::RemoteKind::Alert {
            match RemoteEvent::parse(&r.compound, &r.payload) {
                Ok(event) => self.defer(
                    Trigger::RemoteAlert {
                        compound: r.compound,
                        event,
                    },
                    at,
                ),
                Err(why) => {
                    self.stats.remote_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(compound = %r.compound, reason = %why, "compound alert event refused");
                }
            }
        }
        self.retry_deferred();
    }

    /// Sends a station acknowledgement of compound alert `id` back to its compound.
    fn remote_ack(&mut self, id: &str, by: &str) -> Result<String, String> {
        let found = super::remote::compound_of(self.lifecycle.store().connection(), id)
            .map_err(|e| format!("cannot read the compounds' alerts: {e}"))?;
        let Some((compound, active)) = found else {
            return Err(format!("no compound alert {id}"));
        };
        if !active {
            return Err(format!("alert {id} of {compound} is resolved"));
        }
        let command = super::linkage::Command {
            topic: format!("shouwang/{compound}/commands/ack"),
            payload: serde_json::json!({ "id": id, "by": by })
                .to_string()
                .into_bytes(),
        };
        if !self.lifecycle.send_command(command) {
            return Err("the command publisher is busy; try again".to_owned());
        }
        tracing::info!(compound = %compound, id, by, "station acknowledgement sent to the compound");
        Ok(compound)
    }

    /// Compounds silent for too long get their `compound_offline` alert.
    fn compounds_tick(&mut self, at: DateTime<Utc>) {
        let config = self.lifecycle.config().clone();
        for change in self.liveness.tick(&config, at) {
            if let super::remote::LivenessChange::Silent {
                compound,
                name,
                silent_s,
            } = change
            {
                tracing::warn!(compound = %compound, silent_s, "compound silent: raising compound_offline");
                self.defer(
                    Trigger::Raise {
                        source: super::remote::offline_source(&compound),
                        location: Location {
                            label: name,
                            ..Location::default()
                        },
                        kind: AlertKind::CompoundOffline,
                        level: Level::Orange,
                        readings: serde_json::json!({ "compound": compound, "silent_s": silent_s }),
                    },
                    at,
                );
            }
        }
    }

    fn tick(&mut self, at: DateTime<Utc>) {
        self.compounds_tick(at);
        self.lifecycle.flush_rule_resets();
        self.retry_deferred();
        match self.lifecycle.on_tick(at) {
            Ok(alerts) if alerts.is_empty() => {}
            Ok(alerts) => {
                self.publish(alerts);
                self.recovered();
            }
            // Escalation is re-evaluated every tick: nothing to keep but what was committed.
            Err(PartialCommit { committed, error }) => {
                self.publish(committed);
                self.failed(&error.to_string());
                self.release_reserve(&error);
            }
        }
    }

    fn defer(&mut self, trigger: Trigger, at: DateTime<Utc>) {
        if self.deferred.len() >= MAX_DEFERRED {
            self.stats.dropped_total.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                trigger = ?trigger,
                waiting = self.deferred.len(),
                "alert event dropped: the database has refused writes for too long"
            );
            return;
        }
        // Counted as waiting only once a retry has failed (see `retry_deferred`): a healthy
        // commit must never show up as "waiting", not even for an instant.
        self.deferred.push_back((trigger, at));
    }

    /// Commits waiting events in order until one fails again.
    pub fn retry_deferred(&mut self) {
        while let Some((trigger, at)) = self.deferred.front() {
            let started = Instant::now();
            let (committed, error) = attempt(&mut self.lifecycle, trigger, *at);
            crate::metrics::hooks::alert_commit_took(started.elapsed(), committed.len());
            self.publish(committed);
            if let Some(error) = error {
                self.failed(&error.to_string());
                if self.release_reserve(&error) {
                    continue;
                }
                break;
            }
            self.deferred.pop_front();
            self.recovered();
        }
        self.count_deferred();
        self.give_waiting_marks();
    }

    /// A commit went through: ends a run of failures once nothing waits any more.
    fn recovered(&mut self) {
        if self.deferred.is_empty() && self.failing_since_log.take().is_some() {
            tracing::info!("the database accepts alert events again; all deferred ones recorded");
        }
    }

    fn count_deferred(&self) {
        let n = u64::try_from(self.deferred.len()).unwrap_or(u64::MAX);
        self.stats.deferred.store(n, Ordering::Release);
    }

    /// Counts a failure; logs the first of a run, then once per [`FAILURE_LOG_EVERY`].
    fn failed(&mut self, error: &str) {
        self.stats.failed(error);
        let due = self
            .failing_since_log
            .is_none_or(|last| last.elapsed() >= FAILURE_LOG_EVERY);
        if due {
            self.failing_since_log = Some(Instant::now());
            tracing::error!(
                error,
                waiting = self.deferred.len(),
                "alert events cannot be recorded (disk full?); they wait in memory and are \
                 retried every second"
            );
        }
    }

    fn reply(
        &mut self,
        result: Result<Alert, LifecycleError>,
        reply: oneshot::Sender<Result<Alert, LifecycleError>>,
    ) {
        match result {
            Ok(alert) => {
                // The caller may have given up waiting: the alert is recorded all the same.
                let _ = reply.send(Ok(alert.clone()));
                self.publish(vec![alert]);
                self.recovered();
            }
            Err(error) => {
                if let LifecycleError::Store(e) = &error {
                    self.failed(&e.to_string());
                    self.release_reserve(e);
                }
                let _ = reply.send(Err(error));
            }
        }
    }

    fn publish(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            tracing::info!(
                id = %alert.id, seq = alert.seq, kind = %alert.kind, level = %alert.level.as_str(),
                event = alert.event.as_str(), source = %alert.source.key(), "alert"
            );
            if alert.event == super::model::EventKind::Raised {
                crate::metrics::hooks::alert_raised(alert.kind, alert.level);
            }
            // No receiver (nobody subscribed yet) is fine: the store has it.
            let _ = self.published.send(alert);
        }
    }
}

/// Applies `trigger`: what it committed, and the error that stopped it, if any.
fn attempt(
    lifecycle: &mut Lifecycle,
    trigger: &Trigger,
    at: DateTime<Utc>,
) -> (Vec<Alert>, Option<StoreError>) {
    let single = |r: Result<Option<Alert>, StoreError>| match r {
        Ok(alert) => (alert.into_iter().collect(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    match trigger {
        Trigger::Signal(s) => single(lifecycle.on_signal(s, at)),
        Trigger::Raise {
            source,
            location,
            kind,
            level,
            readings,
        } => single(
            lifecycle
                .raise_or_update(
                    source.clone(),
                    location.clone(),
                    *kind,
                    *level,
                    readings.clone(),
                    at,
                )
                .map(Some),
        ),
        Trigger::ResolveSource { source, kind, by } => {
            single(lifecycle.resolve_source(source, *kind, by, at))
        }
        Trigger::RemoteHeartbeat { compound, body } => {
            match lifecycle.record_heartbeat(compound, body, at) {
                Ok(()) => (Vec::new(), None),
                Err(e) => (Vec::new(), Some(e)),
            }
        }
        Trigger::RemoteAlert { compound, event } => {
            match lifecycle.record_remote(compound, event, at) {
                Ok(_) => (Vec::new(), None),
                Err(e) => (Vec::new(), Some(e)),
            }
        }
        Trigger::AttachEvidence { id, evidence } => {
            single(lifecycle.attach_evidence(id, evidence, at))
        }
        Trigger::ActuatorState { device, state } => {
            match lifecycle.on_actuator_state(device, state, at) {
                Ok(alerts) => (alerts, None),
                Err(PartialCommit { committed, error }) => (committed, Some(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertState, AlertStore, EventKind};
    use crate::ingest::decode::Values;
    use crate::rules::{Cause, Change};
    use std::path::Path;

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
id = "b2-u3-smoke"
kind = "smoke"
location = { building = "b2", unit = "u3", floor = 5, room = "501" }
"#;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap()
    }

    fn task(dir: &Path) -> (AlertTask, broadcast::Receiver<Alert>, Arc<AlertTaskStats>) {
        let config = Arc::new(edge_config::parse(CONFIG, "t.toml", Path::new(".")).unwrap());
        let store = AlertStore::open(&dir.join("db")).unwrap();
        let lifecycle = Lifecycle::new(config, store).unwrap();
        let (tx, rx) = broadcast::channel(64);
        let stats = Arc::new(AlertTaskStats::default());
        (AlertTask::new(lifecycle, tx, stats.clone()), rx, stats)
    }

    fn smoke_signal(change: Change) -> Signal {
        Signal {
            device: 0,
            kind: AlertKind::Smoke,
            change,
            causes: vec![Cause::SmokeDetected],
            values: Values {
                smoke: Some(true),
                ..Values::default()
            },
        }
    }

    fn smoke(change: Change) -> AlertInput {
        Trigger::Signal(smoke_signal(change)).into()
    }

    /// Evidence big enough to need new database pages whatever room the existing ones have.
    fn bulky_gateway_alert() -> AlertInput {
        Trigger::Raise {
            source: Source::Gateway("camera-1".to_owned()),
            location: Location::default(),
            kind: AlertKind::CameraDown,
            level: Level::Yellow,
            readings: serde_json::json!({ "log": "x".repeat(64 * 1024) }),
        }
        .into()
    }

    /// Makes the database as full as a full disk: SQLite answers SQLITE_FULL ("database or
    /// disk is full") to any commit that needs one more page.
    fn fill_disk(task: &AlertTask, full: bool) {
        let conn = task.lifecycle().store().connection();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let max = if full { pages } else { 1 << 30 };
        conn.execute_batch(&format!("PRAGMA max_page_count = {max}"))
            .unwrap();
    }

    fn drain(rx: &mut broadcast::Receiver<Alert>) -> Vec<Alert> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_smoke_alarm_refused_by_a_full_disk_is_recorded_in_order_with_its_arrival_time_once_space_is_back(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut task, mut rx, stats) = task(dir.path());
        fill_disk(&task, true);

        task.handle(bulky_gateway_alert(), t(0));
        task.handle(smoke(Change::Raise(Level::Red)), t(1));
        task.handle(AlertInput::Tick, t(2));
        assert_eq!(task.deferred(), 2, "both wait, in arrival order");
        assert!(
            drain(&mut rx).is_empty(),
            "nothing published before it is recorded"
        );
        let s = stats.snapshot();
        assert_eq!((s.deferred, s.dropped_total), (2, 0));
        assert!(s.failures_total >= 3, "{s:?}");
        let error = s.last_error.unwrap_or_default();
        assert!(error.contains("full"), "{error}");

        fill_disk(&task, false);
        task.handle(AlertInput::Tick, t(3));
        assert_eq!(task.deferred(), 0);
        let published = drain(&mut rx);
        let got: Vec<_> = published
            .iter()
            .map(|a| {
                (
                    a.kind,
                    a.seq,
                    crate::alerts::lifecycle::timestamp(a.raised_at),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    AlertKind::CameraDown,
                    1,
                    "2026-09-21T14:13:20.000Z".to_owned()
                ),
                (AlertKind::Smoke, 2, "2026-09-21T14:13:21.000Z".to_owned()),
            ]
        );
        let active = task.lifecycle().store().active().unwrap();
        assert_eq!(active.len(), 2, "both recorded");
        assert_eq!(stats.snapshot().deferred, 0);
    }

    #[test]
    fn an_input_queued_before_the_stop_is_committed_and_the_task_ends_while_a_sender_is_still_alive(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (task, mut rx, _) = task(dir.path());
        let (tx, mut inputs) = mpsc::channel(8);
        let stop = CancellationToken::new();
        // The smoke alarm is queued, then the stage is stopped, before the task even runs.
        tx.try_send(smoke(Change::Raise(Level::Red))).unwrap();
        stop.cancel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            run(task, &mut inputs, &stop);
            done_tx.send(()).unwrap();
        });
        let ended = done.recv_timeout(Duration::from_secs(10));
        assert!(ended.is_ok(), "the task must end although `tx` is alive");
        thread.join().unwrap();
        let published = drain(&mut rx);
        assert_eq!(
            published.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [AlertKind::Smoke],
            "the queued alarm was committed and published"
        );
        let store = AlertStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.active().unwrap().len(), 1, "and it is in the store");
        // The sender lived through it all: only now does it go.
        drop(tx);
    }

    #[test]
    fn a_running_task_stops_by_its_token_after_what_was_sent_before() {
        let dir = tempfile::tempdir().unwrap();
        let (task, mut rx, _) = task(dir.path());
        let (tx, mut inputs) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || run(task, &mut inputs, &stop))
        };
        tx.blocking_send(smoke(Change::Raise(Level::Red))).unwrap();
        tx.blocking_send(smoke(Change::Clear)).unwrap();
        stop.cancel();
        thread.join().unwrap();
        let events: Vec<_> = drain(&mut rx).into_iter().map(|a| a.event).collect();
        assert_eq!(events, [EventKind::Raised, EventKind::Resolved]);
        assert!(
            tx.try_send(AlertInput::Tick).is_err(),
            "the queue is closed once the task is gone"
        );
    }

    #[test]
    fn a_clear_waits_behind_its_raise_so_the_alarm_is_raised_then_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let (mut task, mut rx, _) = task(dir.path());
        fill_disk(&task, true);
        task.handle(bulky_gateway_alert(), t(0));
        task.handle(smoke(Change::Raise(Level::Red)), t(1));
        task.handle(smoke(Change::Clear), t(5));
        fill_disk(&task, false);
        task.handle(AlertInput::Tick, t(6));
        let smoke: Vec<_> = drain(&mut rx)
            .into_iter()
            .filter(|a| a.kind == AlertKind::Smoke)
            .map(|a| (a.event, a.state))
            .collect();
        assert_eq!(
            smoke,
            [
                (EventKind::Raised, AlertState::Raised),
                (EventKind::Resolved, AlertState::Resolved)
            ]
        );
    }

    #[test]
    fn a_staff_action_refused_by_a_full_disk_gets_the_error_and_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (mut task, mut rx, stats) = task(dir.path());
        task.handle(smoke(Change::Raise(Level::Red)), t(0));
        let id = drain(&mut rx)[0].id.clone();
        fill_disk(&task, true);
        task.handle(bulky_gateway_alert(), t(1));
        // A name long enough that recording it needs a new page, like everything on a full disk.
        let by = format!("duty {}", "x".repeat(16 * 1024));
        let (reply, answer) = oneshot::channel();
        task.handle(AlertInput::Acknowledge { id, by, reply }, t(2));
        let error = answer.blocking_recv().unwrap().unwrap_err();
        assert!(
            matches!(error, LifecycleError::Store(_)),
            "a storage fault: {error}"
        );
        assert!(error.to_string().contains("full"), "{error}");
        assert_eq!(task.deferred(), 1, "only the gateway alert waits");
        assert!(stats.snapshot().failures_total >= 2);
    }

    #[test]
    fn when_too_many_events_wait_new_ones_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut task, _rx, stats) = task(dir.path());
        fill_disk(&task, true);
        task.handle(bulky_gateway_alert(), t(0));
        for _ in 1..MAX_DEFERRED {
            task.defer(Trigger::Signal(smoke_signal(Change::Clear)), t(1));
        }
        assert_eq!(task.deferred(), MAX_DEFERRED);
        task.handle(smoke(Change::Raise(Level::Red)), t(2));
        assert_eq!(task.deferred(), MAX_DEFERRED);
        assert_eq!(stats.snapshot().dropped_total, 1);
    }
}
