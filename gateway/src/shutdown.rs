//! Graceful shutdown: one signal, a completion guard per task, stages stopped in order.
//!
//! Every long-running task is spawned into one of four [`Stage`]s. On shutdown the stages are
//! stopped one after the other — inputs (broker listeners, cameras) first, so nothing new
//! arrives; then processing (rules, alert lifecycle), which drains what is already queued;
//! then the outbox flush (the uplink gets its last chance to deliver and every accepted alert
//! is already durable); the database last. Each stage has its own cancellation token, so a
//! processing task keeps running while inputs stop, and a [`TaskTracker`] whose per-task
//! token is the completion guard: the stage is finished when every guard is dropped.
//! The whole sequence has one deadline; stages still running when it expires are reported,
//! and each later stage still gets [`STAGE_GRACE`] to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::supervise::{Health, Severity, StageResult};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Minimum time each stage gets to stop, even once the overall deadline has passed.
pub const STAGE_GRACE: Duration = Duration::from_millis(100);

/// The stop order. Earlier stages stop first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Broker listeners, MQTT subscriptions, camera capture: everything that admits new work.
    Inputs,
    /// Rules, alert lifecycle, video analysis: drains channels fed by inputs.
    Processing,
    /// Uplink drain of the outbox: last chance to deliver before the process exits.
    Outbox,
    /// The SQLite writer: closes after every producer of writes has stopped.
    Database,
}

impl Stage {
    /// All stages in stop order.
    pub const ORDER: [Stage; 4] = [
        Stage::Inputs,
        Stage::Processing,
        Stage::Outbox,
        Stage::Database,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// What happened during a shutdown.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Stages whose tasks had not all finished when the deadline expired.
    pub timed_out: Vec<Stage>,
}

impl ShutdownReport {
    /// True when every stage finished before the deadline.
    pub fn clean(&self) -> bool {
        self.timed_out.is_empty()
    }
}

/// Owns the per-stage cancellation tokens and task trackers.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// One token per stage so stages can be cancelled one after another, not all at once:
    /// processing must keep draining while inputs close.
    tokens: [CancellationToken; 4],
    /// One tracker per stage; each spawned task holds the tracker's completion guard until it
    /// returns, so waiting on the tracker waits for every task of the stage.
    trackers: [TaskTracker; 4],
    /// Every supervised stage's state: shared with the fault reporter, status and console.
    health: Arc<Health>,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cancellation token of a stage (cancelled when that stage is asked to stop).
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.tokens[stage.index()].clone()
    }

    /// Spawns a task in a stage. The task receives its stage's token and must return soon
    /// after the token is cancelled.
    pub fn spawn<F, Fut>(&self, stage: Stage, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.token(stage));
        self.trackers[stage.index()].spawn(fut);
    }

    /// The health of every supervised stage.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs `start` as the supervised stage `name` of `stage`: started again (with backoff)
    /// whenever it returns, fails or panics before shutdown, each time a fault (see
    /// [`crate::supervise`]). `start` gets the stage token; what must survive a restart
    /// (channels, counters) lives in what it captures. Returns the task's own token (a
    /// child of the stage's): cancelling it retires the task for good, without a fault
    /// (a camera removed by a config reload).
    pub fn supervise<F, Fut>(
        &self,
        stage: Stage,
        name: impl Into<String>,
        severity: Severity,
        start: F,
    ) -> CancellationToken
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = StageResult> + Send + 'static,
    {
        let own = self.token(stage).child_token();
        let supervisor = crate::supervise::supervise(
            name.into(),
            severity,
            self.health.clone(),
            own.clone(),
            self.token(Stage::Inputs),
            start,
        );
        self.trackers[stage.index()].spawn(supervisor);
        own
    }

    /// [`Self::supervise`] for a blocking loop (e.g. a SQLite writer), run on the blocking pool.
    pub fn supervise_blocking<F>(
        &self,
        stage: Stage,
        name: impl Into<String>,
        severity: Severity,
        start: F,
    ) -> CancellationToken
    where
        F: FnMut(CancellationToken) -> StageResult + Send + 'static,
    {
        // The closure is shared with each run's blocking thread; a panic poisons the mutex,
        // which is harmless here (the closure holds no invariant a panic could break).
        let start = Arc::new(std::sync::Mutex::new(start));
        self.supervise(stage, name, severity, move |token| {
            let start = start.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut start = start.lock().unwrap_or_else(|e| e.into_inner());
                    (*start)(token)
                })
                .await
                .map_err(|e| match e.try_into_panic() {
                    Ok(p) => std::panic::resume_unwind(p),
                    Err(e) => e.to_string(),
                })?
            }
        })
    }

    /// Runs a blocking closure (e.g. a SQLite writer loop) as a task of a stage.
    pub fn spawn_blocking<F>(&self, stage: Stage, task: F)
    where
        F: FnOnce(CancellationToken) + Send + 'static,
    {
        let token = self.token(stage);
        self.trackers[stage.index()].spawn_blocking(move || task(token));
    }

    /// Stops every stage in order within one overall deadline.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let until = Instant::now() + deadline;
        let mut report = ShutdownReport::default();
        for stage in Stage::ORDER {
            let i = stage.index();
            self.tokens[i].cancel();
            self.trackers[i].close();
            // A stage after a stuck one still gets a short grace to close (the database
            // must get its checkpoint even if a camera task hung).
            let stage_until = until.max(Instant::now() + STAGE_GRACE);
            let finished = tokio::time::timeout_at(stage_until, self.trackers[i].wait()).await;
            if finished.is_err() {
                tracing::warn!(?stage, "stage did not stop before the shutdown deadline");
                report.timed_out.push(stage);
            } else {
                tracing::debug!(?stage, "stage stopped");
            }
        }
        report
    }
}

/// SIGINT and SIGTERM handlers: the one shutdown signal. Create it *before* announcing
/// readiness, so a signal sent right after "ready" is never lost to the default action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the name of the first signal received.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_inputs_first_database_last() {
        let life = Lifecycle::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        for stage in [
            Stage::Database,
            Stage::Outbox,
            Stage::Processing,
            Stage::Inputs,
        ] {
            let log = log.clone();
            life.spawn(stage, move |token| async move {
                token.cancelled().await;
                // Later stages take a little time: order must still hold.
                tokio::time::sleep(Duration::from_millis(10)).await;
                log.lock().map(|mut l| l.push(stage)).ok();
            });
        }
        let report = life.shutdown(Duration::from_secs(5)).await;
        assert!(report.clean());
        assert_eq!(*log.lock().unwrap(), Stage::ORDER.to_vec());
    }

    #[tokio::test(start_paused = true)]
    async fn processing_keeps_running_while_inputs_stop() {
        let life = Lifecycle::new();
        let processing_token = life.token(Stage::Processing);
        let (tx, rx) = tokio::sync::oneshot::channel();
        life.spawn(Stage::Inputs, move |token| async move {
            token.cancelled().await;
            tx.send(processing_token.is_cancelled()).ok();
        });
        life.shutdown(Duration::from_secs(1)).await;
        assert_eq!(rx.await.ok(), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_stage_is_reported_and_does_not_hang_shutdown() {
        let life = Lifecycle::new();
        life.spawn(Stage::Processing, |_token| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        life.spawn(Stage::Database, move |token| async move {
            token.cancelled().await;
            closed_tx.send(()).ok();
        });
        let report = life.shutdown(Duration::from_secs(2)).await;
        assert_eq!(report.timed_out, vec![Stage::Processing]);
        // The database still gets its turn to close after the stuck stage.
        assert!(closed_rx.await.is_ok());
    }
}
