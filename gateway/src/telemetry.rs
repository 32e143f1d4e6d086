//! Telemetry: every accepted reading is made durable in the outbox's telemetry stream, in
//! batches, so the platform gets the readings behind every alert (and the installers the
//! history of every sensor) even after a WAN outage.
//!
//! Telemetry is the lowest class: it is committed with `synchronous=NORMAL` in batches of up
//! to [`BATCH`] rows (hundreds of thousands of rows per second), drained last and evicted
//! first by the disk quota. The rules stage hands readings over with `try_send`: if this
//! writer ever falls behind, readings are dropped *here* and counted — an alarm is never
//! delayed by telemetry.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::SecondsFormat;
use rusqlite::Connection;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::ingest::decode::Values;
use crate::outbox::{self, Durability, NewMessage, OutboxError};
use crate::rules::Reading;

/// Most rows committed in one transaction.
pub const BATCH: usize = 1000;

/// One reading as sent upstream on `{prefix}/{site}/telemetry`.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub site: String,
    pub device: String,
    /// Gateway receive time, RFC 3339 with milliseconds.
    pub at: String,
    pub values: Values,
}

impl Record {
    pub fn new(site: &str, device: &str, r: &Reading) -> Self {
        Record {
            site: site.to_owned(),
            device: device.to_owned(),
            at: r.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            values: r.decoded.values.clone(),
        }
    }
}

/// Counters of the telemetry writer.
#[derive(Debug, Default)]
pub struct TelemetryStats {
    /// Rows committed to the outbox.
    pub committed: AtomicU64,
    /// Readings dropped because the writer was behind (channel full).
    pub dropped: AtomicU64,
    /// Batches that failed to commit (disk full, I/O error): their readings are lost and
    /// counted here; alerts are unaffected.
    pub failed_rows: AtomicU64,
}

/// Errors of the telemetry writer.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("telemetry: {0}")]
    Outbox(#[from] OutboxError),
}

/// Opens the writer's own connection (WAL: it writes beside the alert store).
pub fn open(db_path: &Path) -> Result<Connection, TelemetryError> {
    let conn = Connection::open(db_path)?;
    outbox::configure_connection(&conn)?;
    outbox::migrate(&conn)?;
    Ok(conn)
}

/// Writes batches until every sender is gone (blocking; run it on its own thread).
pub fn run(mut conn: Connection, mut rx: mpsc::Receiver<Record>, stats: Arc<TelemetryStats>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match commit(&mut conn, &batch) {
            Ok(()) => stats.committed.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                tracing::error!(error = %e, rows = n, "telemetry batch not stored");
                stats.failed_rows.fetch_add(n, Ordering::Relaxed)
            }
        };
        batch.clear();
    }
    tracing::info!("telemetry writer stopped");
}

fn commit(conn: &mut Connection, batch: &[Record]) -> Result<(), TelemetryError> {
    let msgs: Vec<NewMessage> = batch
        .iter()
        .map(|r| {
            let ms =
                chrono::DateTime::parse_from_rfc3339(&r.at).map_or(0, |t| t.timestamp_millis());
            let payload = serde_json::to_vec(r).unwrap_or_default();
            NewMessage::telemetry(ulid::Ulid::generate().to_string(), payload, ms)
        })
        .collect();
    outbox::commit_with(conn, Durability::Normal, |tx| {
        outbox::enqueue_batch(tx, &msgs).map(|_| ())
    })?;
    Ok(())
}
