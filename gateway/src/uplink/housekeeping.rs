//! Housekeeping: quota enforcement, the `buffer_full` alert and the status file, every
//! second, whatever the link state.

use crate::ingest::IngestStats;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_config::{AlertKind, Level};
use tokio_util::sync::CancellationToken;

use super::status::{now_ms, StatusFile, UplinkStatus, STATUS_TOP_DEVICES};
use super::SharedOutbox;
use crate::alerts::task::{AlertTaskStats, Trigger};
use crate::alerts::{Location, Source, WeakAlertBus};
use crate::outbox::QuotaReport;

/// What housekeeping does and how often.
#[derive(Debug, Clone)]
pub struct HousekeepingSettings {
    /// `storage.quota_mb` in bytes: the outbox's data budget.
    pub quota_bytes: u64,
    /// Where to write `status.json` (`None`: don't).
    pub status_file: Option<PathBuf>,
    /// Counters of other stages to include in `status.json`.
    pub sources: StatusSources,
    pub every: Duration,
}

/// Counters of other stages that `status.json` carries (`None`: not included).
#[derive(Debug, Clone, Default)]
pub struct StatusSources {
    pub ingest: Option<Arc<IngestStats>>,
    pub alert_store: Option<Arc<AlertTaskStats>>,
    pub reserve: Option<Arc<crate::reserve::Reserve>>,
    /// Supervised stages and the self-test.
    pub health: Option<Arc<crate::supervise::Health>>,
    /// The analysed cameras' counters, filled in once the cameras have started (they start
    /// after the outbox).
    pub cameras: crate::video::CameraSlot,
}

/// The source of gateway-raised outbox alerts.
pub fn outbox_source() -> Source {
    Source::Gateway("outbox".to_owned())
}

/// Runs until `token` is cancelled.
pub async fn run(
    settings: HousekeepingSettings,
    outbox: SharedOutbox,
    status: Arc<UplinkStatus>,
    alert_inputs: WeakAlertBus,
    token: CancellationToken,
) {
    status
        .quota_bytes
        .store(settings.quota_bytes, Ordering::Relaxed);
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Unknown at start: the first check resolves a `buffer_full` left active by a previous
    // run if the outbox fits now.
    let mut buffer_full: Option<bool> = None;
    let mut status_ok = true;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        crate::supervise::fault_point("housekeeping").await;
        let quota = settings.quota_bytes;
        match outbox.call(move |o| o.enforce_quota(quota)).await {
            Ok(report) => {
                if buffer_full != Some(report.buffer_full) {
                    buffer_full = Some(report.buffer_full);
                    status
                        .buffer_full
                        .store(report.buffer_full, Ordering::Relaxed);
                    signal_buffer_full(&alert_inputs, &report).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "outbox quota check failed"),
        }
        status_ok = report_status_write(status_ok, write_status(&settings, &status).await);
    }
    report_status_write(status_ok, write_status(&settings, &status).await);
}

/// Logs a failure to write `status.json` once when it starts and once when it ends (it is
/// retried every second; a full disk would otherwise log every second). Returns the new state.
fn report_status_write(was_ok: bool, result: Result<(), String>) -> bool {
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

async fn signal_buffer_full(inputs: &WeakAlertBus, report: &QuotaReport) {
    let input = if report.buffer_full {
        tracing::warn!(
            bytes = report.bytes_after,
            max_bytes = report.max_bytes,
            "outbox full: only red/orange alerts remain and they exceed storage.quota_mb; \
             they are kept, raising buffer_full"
        );
        Trigger::Raise {
            source: outbox_source(),
            location: Location {
                label: "网关 gateway".to_owned(),
                ..Location::default()
            },
            kind: AlertKind::BufferFull,
            level: Level::Orange,
            readings: serde_json::json!({
                "bytes": report.bytes_after,
                "max_bytes": report.max_bytes,
            }),
        }
    } else {
        Trigger::ResolveSource {
            source: outbox_source(),
            kind: AlertKind::BufferFull,
            by: "auto".to_owned(),
        }
    };
    let Some(inputs) = inputs.upgrade() else {
        tracing::warn!("buffer_full change not recorded: the alert task has stopped");
        return;
    };
    if tokio::time::timeout(Duration::from_secs(1), inputs.send(input.into()))
        .await
        .map_or(true, |sent| sent.is_err())
    {
        tracing::warn!("buffer_full change not recorded: the alert task did not take it");
    }
}

async fn write_status(
    settings: &HousekeepingSettings,
    status: &UplinkStatus,
) -> Result<(), String> {
    let Some(path) = settings.status_file.clone() else {
        return Ok(());
    };
    let file = StatusFile {
        pid: std::process::id(),
        updated_at_ms: now_ms(),
        link: status.snapshot(),
        ingest: settings
            .sources
            .ingest
            .as_ref()
            .map(|i| i.snapshot().with_top_devices(STATUS_TOP_DEVICES)),
        alert_store: settings.sources.alert_store.as_ref().map(|a| a.snapshot()),
        reserve: settings.sources.reserve.as_ref().map(|r| r.snapshot()),
        health: settings.sources.health.as_ref().map(|h| h.snapshot()),
        cameras: settings
            .sources
            .cameras
            .get()
            .map(|c| c.iter().map(|(id, s)| (id.clone(), s.snapshot())).collect())
            .unwrap_or_default(),
    };
    match tokio::task::spawn_blocking(move || file.write(&path)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("status file writer failed: {e}")),
    }
}
