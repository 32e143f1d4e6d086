//! The gateway's status: what every stage reports about itself, written every second to
//! [`STATUS_FILE`] (`status.json`) in the data directory, and read back — together with the
//! outbox as stored, read-only from the database — by `gateway status` and the console
//! ([`status_report`]).
//!
//! Each stage contributes a snapshot type of its own and knows nothing of this module (it
//! imports the stages, never the other way round):
//!
//! ```text
//! uplink     UplinkStatus   ─▶ LinkSnapshot        ─┐
//! ingest     IngestStats    ─▶ StatsSnapshot        │
//! alerts     AlertTaskStats ─▶ AlertStoreSnapshot   ├─▶ status writer ─▶ status.json
//! reserve    Reserve        ─▶ ReserveSnapshot      │   (every second, Stage::Outbox)
//! supervise  Health         ─▶ HealthSnapshot       │
//! video      CameraStats    ─▶ camera StatsSnapshot ─┘
//!
//! outbox (SQLite, read-only) + status.json ─▶ status_report ─▶ `gateway status`, console
//! ```
//!
//! A status file older than [`STALE_AFTER`] means the daemon is not running: its counters are
//! then history and the link state is reported as unknown.

mod file;
mod render;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alerts::task::AlertTaskStats;
use crate::ingest::IngestStats;
use crate::outbox::OutboxError;
use crate::reserve::Reserve;
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::{Health, Severity};
use crate::uplink::{now_ms, UplinkStatus};

pub use file::StatusFile;
pub use report::{gateway_alive, status_report, StatusReport};

/// File name of the status snapshot in the data directory.
pub const STATUS_FILE: &str = "status.json";

/// A status file older than this means the daemon is not running (it rewrites it every
/// second).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Devices with the most rejections kept in `status.json`.
pub const STATUS_TOP_DEVICES: usize = 20;

/// Why the status could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status: cannot open the database {path} read-only: {source}")]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("status: status file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status: status file {path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("status: outbox: {0}")]
    Outbox(#[from] OutboxError),
}

/// Where `status.json` gets each stage's snapshot (`None`: not included).
#[derive(Debug, Clone)]
pub struct StatusSources {
    /// The uplink's link state and counters (`disabled` without `[uplink]`).
    pub link: Arc<UplinkStatus>,
    /// The street station link's, when `[station_link]` is configured.
    pub station_link: Option<Arc<UplinkStatus>>,
    pub ingest: Option<Arc<IngestStats>>,
    pub alert_store: Option<Arc<AlertTaskStats>>,
    pub reserve: Option<Arc<Reserve>>,
    /// Supervised stages and the self-test.
    pub health: Option<Arc<Health>>,
    /// The analysed cameras' counters, filled in once the cameras have started (they start
    /// after the outbox).
    pub cameras: crate::video::CameraSlot,
    /// The embedded broker's front (absent with an external broker).
    pub broker: Option<Arc<crate::broker::front::FrontStats>>,
}

impl StatusSources {
    /// Every stage's snapshot now, as `status.json` carries it.
    pub fn snapshot(&self) -> StatusFile {
        StatusFile {
            pid: std::process::id(),
            updated_at_ms: now_ms(),
            link: self.link.snapshot(),
            station_link: self.station_link.as_ref().map(|s| s.snapshot()),
            ingest: self
                .ingest
                .as_ref()
                .map(|i| i.snapshot().with_top_devices(STATUS_TOP_DEVICES)),
            alert_store: self.alert_store.as_ref().map(|a| a.snapshot()),
            reserve: self.reserve.as_ref().map(|r| r.snapshot()),
            health: self.health.as_ref().map(|h| h.snapshot()),
            broker: self.broker.as_ref().map(|b| b.snapshot()),
            cameras: self
                .cameras
                .get()
                .map(|c| c.iter().map(|(id, s)| (id.clone(), s.snapshot())).collect())
                .unwrap_or_default(),
        }
    }
}

/// Writes `status.json` at `path` every `every`, whatever the other stages do, as the
/// supervised stage `status` of [`Stage::Outbox`] (its last write comes after the link has
/// stopped, so the file ends with the final counters).
pub fn spawn(stages: &Stages, path: PathBuf, sources: StatusSources, every: Duration) {
    stages.supervise(Stage::Outbox, "status", Severity::Degraded, move |token| {
        let run = run(path.clone(), sources.clone(), every, token);
        async move {
            run.await;
            Ok(())
        }
    });
}

/// Runs until `token` is cancelled, then writes the file one last time.
async fn run(path: PathBuf, sources: StatusSources, every: Duration, token: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ok = true;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        crate::supervise::fault_point("status").await;
        ok = report_write(ok, write(&path, &sources).await);
    }
    report_write(ok, write(&path, &sources).await);
}

/// Logs a failure to write `status.json` once when it starts and once when it ends (it is
/// retried every second; a full disk would otherwise log every second). Returns the new state.
fn report_write(was_ok: bool, result: Result<(), String>) -> bool {
    match (was_ok, result) {
        (true, Err(e)) => {
            tracing::warn!(error = %e, "cannot write the status file; `gateway status` will call it stale");
            false
        }
        (false, Ok(())) => {
            tracing::info!("status file written again");
            true
        }
        (_, r) => r.is_ok(),
    }
}

async fn write(path: &std::path::Path, sources: &StatusSources) -> Result<(), String> {
    let (file, path) = (sources.snapshot(), path.to_owned());
    match tokio::task::spawn_blocking(move || file.write(&path)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("status file writer failed: {e}")),
    }
}
