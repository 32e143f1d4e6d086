//! Housekeeping: quota enforcement and the `buffer_full` alert, every second, whatever the
//! link state.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_config::{AlertKind, Level};
use tokio_util::sync::CancellationToken;

use super::status::UplinkStatus;
use super::SharedOutbox;
use crate::alerts::task::Trigger;
use crate::alerts::{Location, Source, WeakAlertBus};
use crate::outbox::QuotaReport;

/// What housekeeping does and how often.
#[derive(Debug, Clone)]
pub struct HousekeepingSettings {
    /// `storage.quota_mb` in bytes: the outbox's data budget.
    pub quota_bytes: u64,
    pub every: Duration,
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
