//! Telemetry: every accepted reading is made durable in the outbox's telemetry stream, in
//! batches, so the platform gets the readings behind every alert (and the installers the
//! history of every sensor) even after a WAN outage.
//!
//! Telemetry is the lowest class: it is committed with `synchronous=NORMAL` in batches of up
//! to [`BATCH`] rows (hundreds of thousands of rows per second), drained last and evicted
//! first by the disk quota. The rules stage hands readings over with `try_send`: if this
//! writer ever falls behind, readings are dropped *here* and counted — an alarm is never
//! delayed by telemetry.
//!
//! Once the disk reserve has been given up (the disk filled up, see [`crate::reserve`]), the
//! writer stops storing readings — counted in [`TelemetryStats::paused_rows`] — so that the
//! room the reserve made is kept for alerts rather than eaten by readings.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::SecondsFormat;
use rusqlite::Connection;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::ingest::decode::Values;
use crate::outbox::{self, Durability, NewMessage, OutboxError};
use crate::reserve::Reserve;
use crate::rules::Reading;

/// Most rows committed in one transaction.
pub const BATCH: usize = 1000;
/// How long the writer gathers readings after the first of a batch before it commits.
///
/// The reading that raises an alarm reaches this writer and the alert task at the same
/// moment. Committing at once, the two transactions met on nearly every alarm, and the
/// alarm's `synchronous=FULL` commit waited for the telemetry writer's lock (issue 18). The
/// alert task starts its transaction well within this pause, so the telemetry commit comes
/// after it; a reading is durable a few milliseconds later, which nothing waits for (the
/// sensor's PUBACK does not wait for telemetry), and batches get larger under load.
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(4);

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
    /// Readings not stored because the disk filled up and the reserve was given up.
    pub paused_rows: AtomicU64,
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
    let mut conn = crate::db::open_writer(db_path)?;
    outbox::configure_connection(&mut conn)?;
    outbox::migrate(&conn)?;
    Ok(conn)
}

/// Writes batches until every sender is gone (blocking; run it on its own thread). With a
/// `reserve` that has been released, readings are counted and not stored.
pub fn run(
    mut conn: Connection,
    rx: &mut mpsc::Receiver<Record>,
    stats: Arc<TelemetryStats>,
    reserve: Option<Arc<Reserve>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut paused = false;
    let mut failures = FailureLog::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        gather(rx, &mut batch);
        if batch.len() < BATCH {
            std::thread::sleep(GATHER);
            gather(rx, &mut batch);
        }
        let n = batch.len() as u64;
        if reserve.as_ref().is_some_and(|r| r.released()) {
            if !std::mem::replace(&mut paused, true) {
                tracing::warn!("disk full: readings are no longer stored, to keep room for alerts, until the gateway restarts");
            }
            stats.paused_rows.fetch_add(n, Ordering::Relaxed);
        } else {
            match commit(&mut conn, &batch) {
                Ok(()) => stats.committed.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    failures.log(&e, n);
                    stats.failed_rows.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        batch.clear();
        crate::supervise::fault_point_blocking("telemetry");
    }
    tracing::info!("telemetry writer stopped");
}

/// Adds what is queued to `batch`, up to [`BATCH`] rows.
fn gather(rx: &mut mpsc::Receiver<Record>, batch: &mut Vec<Record>) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

/// Logs failed batches at most once per [`FAILURE_LOG_EVERY`] (a full disk fails every batch).
#[derive(Default)]
struct FailureLog {
    last: Option<std::time::Instant>,
    since_last: u64,
}

const FAILURE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl FailureLog {
    fn log(&mut self, e: &TelemetryError, rows: u64) {
        self.since_last += rows;
        if self.last.is_some_and(|t| t.elapsed() < FAILURE_LOG_EVERY) {
            return;
        }
        tracing::error!(error = %e, rows = self.since_last, "telemetry not stored");
        self.last = Some(std::time::Instant::now());
        self.since_last = 0;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> Record {
        Record {
            site: "s".to_owned(),
            device: format!("d{i}"),
            at: "2026-11-24T03:00:00.000Z".to_owned(),
            values: Values::default(),
        }
    }

    fn write(reserve: Option<Arc<Reserve>>, dir: &Path) -> Arc<TelemetryStats> {
        let conn = open(&dir.join("db")).unwrap();
        let stats = Arc::new(TelemetryStats::default());
        let (tx, rx) = mpsc::channel(16);
        let writer = {
            let stats = stats.clone();
            std::thread::spawn(move || run(conn, &mut { rx }, stats, reserve))
        };
        for i in 0..10 {
            tx.blocking_send(record(i)).unwrap();
        }
        drop(tx);
        writer.join().unwrap();
        stats
    }

    #[test]
    fn readings_are_stored_while_the_reserve_is_held_and_not_once_it_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Arc::new(Reserve::ensure(dir.path(), 4096));
        let held = write(Some(reserve.clone()), dir.path());
        assert_eq!(held.committed.load(Ordering::Relaxed), 10);

        assert!(reserve.release("recording alert events"));
        let released = write(Some(reserve), dir.path());
        assert_eq!(released.committed.load(Ordering::Relaxed), 0);
        assert_eq!(released.paused_rows.load(Ordering::Relaxed), 10);
        let rows: i64 = open(&dir.path().join("db"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 10, "only the readings from before the disk filled up");
    }
}
