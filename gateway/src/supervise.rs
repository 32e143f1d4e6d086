//! Supervision: no stage of the gateway can end, panic or stop working quietly.
//!
//! # Fault model
//!
//! A fire panel must show a *fault* within 100 s whenever part of it cannot do its job
//! (EN 54-2, GB 4717). Here every long-running task is a named **stage** with a [`Severity`]:
//!
//! - A stage started with [`crate::shutdown::Lifecycle::supervise`] (or `supervise_blocking`)
//!   is restarted when it ends, returns an error or panics, unless the gateway is shutting
//!   down. Each restart waits a little longer ([`RESTART_BACKOFF`], doubling up to
//!   [`RESTART_BACKOFF_MAX`]); its counters live outside the stage (in `Arc`s the stage only
//!   borrows), so they survive the restart.
//! - The moment a stage ends unexpectedly it is marked *faulted* in [`Health`]. The fault
//!   reporter ([`crate::faults`]) turns each faulted stage into a `gateway_fault` alert
//!   (source `gateway:<stage>`; red for [`Severity::AlarmPath`], orange otherwise), which goes
//!   the way of every alert: store → outbox → platform, console, residents' topics untouched.
//!   The fault clears, and the alert resolves, once the restarted stage has run for
//!   [`HEALTHY_AFTER`].
//! - A stage that hangs without ending (a wedged thread, a deadlock) cannot be seen this way.
//!   The end-to-end self-test ([`crate::selftest`]) covers the alarm path against that: a
//!   synthetic reading must travel broker → ingest → rules → alert store commit within
//!   `supervision.self_test_timeout_s`, or the pseudo-stage `self_test` faults (red).
//! - Every transition is logged (`ERROR` on a fault, `WARN` on a restart, `INFO` on recovery),
//!   written to `status.json` (`gateway status` shows each stage) and shown by the console.
//!
//! # Fault injection (tests only)
//!
//! With the environment variable [`FAULT_INJECTION_ENV`] naming a directory, a file
//! `<stage>.panic` in it makes that stage panic at its next step (the file is removed), and
//! `<stage>.wedge` makes it hang at its next step until the file is removed. Stages call
//! [`fault_point`] (async) or [`fault_point_blocking`] once per step; without the variable
//! that is one atomic load.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use edge_config::Level;

/// First wait before a failed stage is started again.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between restarts of a stage that keeps failing.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A restarted stage that has run this long counts as healthy again (fault resolved).
pub const HEALTHY_AFTER: Duration = Duration::from_secs(3);
/// Environment variable naming the fault-injection directory (tests only).
pub const FAULT_INJECTION_ENV: &str = "SHOUWANG_FAULT_INJECTION_DIR";

/// How much a stage's failure matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Without it a sensor's alarm is not raised, recorded or forwarded: a red fault.
    AlarmPath,
    /// Something people rely on (notices, console, telemetry) is missing: an orange fault.
    Degraded,
}

impl Severity {
    /// The level of the `gateway_fault` alert this severity raises.
    pub fn level(self) -> Level {
        match self {
            Severity::AlarmPath => Level::Red,
            Severity::Degraded => Level::Orange,
        }
    }
}

/// What a stage is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Running,
    /// It ended or failed and waits for its restart.
    Restarting,
    /// Stopped because the gateway is shutting down.
    Stopped,
    /// The self-test's round trip is overdue (pseudo-stage `self_test`).
    Failing,
}

/// One stage as `status.json` and the console show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageHealth {
    pub state: StageState,
    pub severity: Severity,
    /// Times the stage was started again after a failure.
    pub restarts: u64,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// Set while the stage is faulted: since when.
    pub faulted_since: Option<DateTime<Utc>>,
}

impl StageHealth {
    fn new(severity: Severity) -> Self {
        StageHealth {
            state: StageState::Running,
            severity,
            restarts: 0,
            last_error: None,
            faulted_since: None,
        }
    }
}

/// The last end-to-end self-test round trips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestSnapshot {
    pub last_ok_at: Option<DateTime<Utc>>,
    pub round_trip_ms: Option<u64>,
    pub failing_since: Option<DateTime<Utc>>,
}

/// Everything `status.json` carries about supervision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    pub stages: BTreeMap<String, StageHealth>,
    pub self_test: Option<SelfTestSnapshot>,
}

impl HealthSnapshot {
    /// Stages faulted right now, alarm path first.
    pub fn faults(&self) -> Vec<(&str, &StageHealth)> {
        let mut f: Vec<_> = self
            .stages
            .iter()
            .filter(|(_, s)| s.faulted_since.is_some())
            .map(|(n, s)| (n.as_str(), s))
            .collect();
        f.sort_by_key(|(_, s)| s.severity != Severity::AlarmPath);
        f
    }
}

/// The health of every stage, shared by the supervisors, the fault reporter, status and
/// the console.
#[derive(Debug, Default)]
pub struct Health {
    /// A std mutex: held for a map update only, never across an await.
    stages: Mutex<BTreeMap<String, StageHealth>>,
    self_test: Mutex<Option<SelfTestSnapshot>>,
    /// Wakes the fault reporter on every transition.
    pub(crate) changed: Notify,
}

impl Health {
    fn update(&self, name: &str, severity: Severity, f: impl FnOnce(&mut StageHealth)) {
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        f(stages
            .entry(name.to_owned())
            .or_insert_with(|| StageHealth::new(severity)));
        drop(stages);
        self.changed.notify_one();
    }

    /// Registers a stage as running (its first start).
    pub fn started(&self, name: &str, severity: Severity) {
        self.update(name, severity, |s| s.state = StageState::Running);
    }

    /// The stage ended or failed while the gateway was not shutting down.
    pub fn failed(&self, name: &str, severity: Severity, error: &str) {
        tracing::error!(
            stage = name,
            ?severity,
            error,
            "gateway stage failed; restarting it"
        );
        self.update(name, severity, |s| {
            s.state = StageState::Restarting;
            s.last_error = Some(error.to_owned());
            s.faulted_since.get_or_insert_with(Utc::now);
        });
    }

    /// The stage was started again after a failure.
    pub fn restarted(&self, name: &str, severity: Severity) {
        tracing::warn!(stage = name, "gateway stage restarted");
        self.update(name, severity, |s| {
            s.state = StageState::Running;
            s.restarts += 1;
        });
    }

    /// The stage has run long enough after a restart: its fault is over.
    pub fn recovered(&self, name: &str, severity: Severity) {
        tracing::info!(stage = name, "gateway stage healthy again");
        self.update(name, severity, |s| s.faulted_since = None);
    }

    /// The stage stopped because the gateway is shutting down.
    pub fn stopped(&self, name: &str, severity: Severity) {
        self.update(name, severity, |s| s.state = StageState::Stopped);
    }

    /// Records the self-test's state; `failing` carries why the alarm path counts as broken.
    pub fn set_self_test(&self, snapshot: SelfTestSnapshot, failing: Option<String>) {
        let faulted = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(SELF_TEST_STAGE)
            .is_some_and(|s| s.faulted_since.is_some());
        // The stage is updated first and the snapshot last, so a reader that sees the
        // self-test failing also sees its stage faulted.
        match (failing, faulted) {
            (Some(error), false) => {
                tracing::error!(error, "self-test: the alarm path is not working");
                self.update(SELF_TEST_STAGE, Severity::AlarmPath, |s| {
                    s.state = StageState::Failing;
                    s.last_error = Some(error);
                    s.faulted_since = Some(Utc::now());
                });
            }
            (None, true) => {
                tracing::info!("self-test: the alarm path works again");
                self.update(SELF_TEST_STAGE, Severity::AlarmPath, |s| {
                    s.state = StageState::Running;
                    s.faulted_since = None;
                });
            }
            (None, false) => self.update(SELF_TEST_STAGE, Severity::AlarmPath, |_| {}),
            (Some(_), true) => {}
        }
        *self.self_test.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        HealthSnapshot {
            stages: self
                .stages
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            self_test: self
                .self_test
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The pseudo-stage name of the end-to-end self-test.
pub const SELF_TEST_STAGE: &str = "self_test";

/// What a stage run returns: `Ok` when it finished its work (its input closed), `Err` with
/// the reason when it gave up. Either is a fault unless the gateway is shutting down.
pub type StageResult = Result<(), String>;

/// Runs one stage under supervision until `shutdown` (the gateway's first stop signal) or
/// its own stage token is cancelled; see the [module docs](self).
pub(crate) async fn supervise<F, Fut>(
    name: String,
    severity: Severity,
    health: Arc<Health>,
    token: CancellationToken,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = StageResult> + Send + 'static,
{
    let name = name.as_str();
    health.started(name, severity);
    let mut backoff = RESTART_BACKOFF;
    loop {
        let mut run = tokio::spawn(start(token.clone()));
        let faulted = health
            .snapshot()
            .stages
            .get(name)
            .and_then(|s| s.faulted_since)
            .is_some();
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(HEALTHY_AFTER), if faulted => {
                health.recovered(name, severity);
                backoff = RESTART_BACKOFF;
                run.await
            }
        };
        if shutdown.is_cancelled() || token.is_cancelled() {
            health.stopped(name, severity);
            return;
        }
        let error = match outcome {
            Ok(Ok(())) => "stopped on its own".to_owned(),
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(e) => e.to_string(),
        };
        health.failed(name, severity, &error);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = token.cancelled() => { health.stopped(name, severity); return; }
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        health.restarted(name, severity);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Test-only fault injection (see the [module docs](self)).
struct Injection {
    dir: PathBuf,
}

static INJECTION: OnceLock<Option<Injection>> = OnceLock::new();

fn injection() -> Option<&'static Injection> {
    INJECTION
        .get_or_init(|| {
            std::env::var_os(FAULT_INJECTION_ENV).map(|dir| {
                tracing::warn!(dir = ?dir, "fault injection is ON (tests only)");
                Injection { dir: dir.into() }
            })
        })
        .as_ref()
}

enum Injected {
    Panic,
    Wedge,
}

fn injected(stage: &str) -> Option<Injected> {
    let inj = injection()?;
    let panic = inj.dir.join(format!("{stage}.panic"));
    if std::fs::remove_file(&panic).is_ok() {
        return Some(Injected::Panic);
    }
    inj.dir
        .join(format!("{stage}.wedge"))
        .exists()
        .then_some(Injected::Wedge)
}

fn wedged(stage: &str) -> bool {
    injection().is_some_and(|inj| inj.dir.join(format!("{stage}.wedge")).exists())
}

/// A step of an async stage: panics or hangs here when a test injects it.
pub async fn fault_point(stage: &str) {
    match injected(stage) {
        None => {}
        Some(Injected::Panic) => panic!("fault injected into stage {stage}"),
        Some(Injected::Wedge) => {
            tracing::warn!(stage, "stage wedged by fault injection");
            while wedged(stage) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A step of a blocking stage: panics or hangs here when a test injects it.
pub fn fault_point_blocking(stage: &str) {
    match injected(stage) {
        None => {}
        Some(Injected::Panic) => panic!("fault injected into stage {stage}"),
        Some(Injected::Wedge) => {
            tracing::warn!(stage, "stage wedged by fault injection");
            while wedged(stage) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn tokens() -> (CancellationToken, CancellationToken) {
        (CancellationToken::new(), CancellationToken::new())
    }

    #[tokio::test(start_paused = true)]
    async fn a_stage_that_panics_is_faulted_restarted_and_healthy_again() {
        let health = Arc::new(Health::default());
        let (token, shutdown) = tokens();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let sup = tokio::spawn(supervise(
            "rules".into(),
            Severity::AlarmPath,
            health.clone(),
            token.clone(),
            shutdown.clone(),
            move |t: CancellationToken| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        panic!("boom");
                    }
                    t.cancelled().await;
                    Ok(())
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = health.snapshot().stages["rules"].clone();
        assert_eq!(s.state, StageState::Restarting);
        assert!(s.faulted_since.is_some());
        assert_eq!(s.last_error.as_deref(), Some("panicked: boom"));
        tokio::time::sleep(RESTART_BACKOFF + HEALTHY_AFTER + Duration::from_millis(10)).await;
        let s = health.snapshot().stages["rules"].clone();
        assert_eq!((s.state, s.restarts), (StageState::Running, 1));
        assert!(s.faulted_since.is_none(), "{s:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        token.cancel();
        sup.await.unwrap();
        assert_eq!(health.snapshot().stages["rules"].state, StageState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stage_that_keeps_failing_stays_faulted_and_backs_off() {
        let health = Arc::new(Health::default());
        let (token, shutdown) = tokens();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        tokio::spawn(supervise(
            "uplink".into(),
            Severity::Degraded,
            health.clone(),
            token,
            shutdown,
            move |_| {
                r.fetch_add(1, Ordering::SeqCst);
                async { Err("broker refused".to_owned()) }
            },
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 0.5 + 1 + 2 + 4 s of backoff fit in 10 s: five runs, not twenty.
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        let s = health.snapshot().stages["uplink"].clone();
        assert!(s.faulted_since.is_some());
        assert_eq!(s.last_error.as_deref(), Some("broker refused"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stage_ending_during_shutdown_is_not_a_fault() {
        let health = Arc::new(Health::default());
        let (token, shutdown) = tokens();
        let sup = tokio::spawn(supervise(
            "ingest".into(),
            Severity::AlarmPath,
            health.clone(),
            token,
            shutdown.clone(),
            {
                let shutdown = shutdown.clone();
                move |_| {
                    let s = shutdown.clone();
                    async move {
                        s.cancelled().await;
                        Ok(())
                    }
                }
            },
        ));
        shutdown.cancel();
        sup.await.unwrap();
        let s = health.snapshot().stages["ingest"].clone();
        assert_eq!(s.state, StageState::Stopped);
        assert!(s.faulted_since.is_none());
    }
}
