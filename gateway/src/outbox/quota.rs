//! Disk quota (eviction) and statistics.

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::schema::{
    self, bump_counter, read_counter, META_ACKS_MISSING, META_BYTES, META_DELIVERED,
    META_EVICTED_NOTICE, META_EVICTED_TELEMETRY, META_EVICTED_WARNING, META_REQUEUED,
};
use super::{to_u64, Class, ClassCounts, OutboxError};

/// What [`enforce_quota`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QuotaReport {
    pub max_bytes: u64,
    /// Accounted bytes before eviction.
    pub bytes_before: u64,
    /// Accounted bytes after eviction.
    pub bytes_after: u64,
    /// Rows evicted by this call, per class (`alarm` is always 0).
    pub evicted: ClassCounts,
    /// Still over quota with nothing evictable left (only alarm rows remain):
    /// the caller raises a local `buffer_full` alert. Nothing is dropped.
    pub buffer_full: bool,
}

/// Outbox figures for the status API. Counters are persisted and survive
/// restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Undelivered rows (pending or in flight) per class.
    pub backlog_by_class: ClassCounts,
    pub backlog_total: u64,
    /// Accounted bytes (the quota's measure).
    pub bytes: u64,
    /// `created_at_ms` of the earliest enqueued undelivered row.
    pub oldest_undelivered_ms: Option<i64>,
    pub delivered_total: u64,
    pub evicted_by_class: ClassCounts,
    pub evicted_total: u64,
    /// Rows made pending again by `requeue_inflight` (re-sent after a reconnect).
    pub requeued_total: u64,
    /// Acks for rows that no longer existed (duplicate PUBACKs, evicted rows).
    pub acks_for_missing_rows: u64,
    /// Undelivered rows per destination beyond the platform (e.g. the street station),
    /// by name; empty when the platform is the only one.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub backlog_by_destination: std::collections::BTreeMap<String, u64>,
}

fn evicted_counter(class: Class) -> Option<&'static str> {
    match class {
        Class::Alarm => None,
        Class::Warning => Some(META_EVICTED_WARNING),
        Class::Notice => Some(META_EVICTED_NOTICE),
        Class::Telemetry => Some(META_EVICTED_TELEMETRY),
    }
}

/// Evicts rows until the accounted bytes fit in `max_bytes`: oldest
/// Telemetry first, then Notice, then Warning ("oldest" = head of the drain
/// order within the class). Alarm rows are never evicted; if they alone
/// exceed the quota the report says `buffer_full`.
///
/// O(1) when under quota. Over quota, everything happens in one write
/// transaction (or a savepoint of the caller's), counters included.
pub fn enforce_quota(conn: &Connection, max_bytes: u64) -> Result<QuotaReport, OutboxError> {
    let bytes = read_counter(conn, META_BYTES)?;
    if bytes <= max_bytes {
        return Ok(QuotaReport {
            max_bytes,
            bytes_before: bytes,
            bytes_after: bytes,
            ..QuotaReport::default()
        });
    }
    schema::in_write_tx(conn, |conn| {
        // Re-read under the write lock: the other side may have changed it.
        let bytes_before = read_counter(conn, META_BYTES)?;
        let mut bytes = bytes_before;
        let mut evicted = ClassCounts::default();
        for class in Class::EVICTION_ORDER {
            if bytes <= max_bytes {
                break;
            }
            let (ids, freed) = oldest_rows_to_free(conn, class, bytes - max_bytes)?;
            let mut delete = conn.prepare("DELETE FROM outbox WHERE id = ?1")?;
            for id in &ids {
                delete.execute([id])?;
            }
            bytes = bytes.saturating_sub(freed);
            *evicted.get_mut(class) = ids.len() as u64;
            if let Some(counter) = evicted_counter(class) {
                bump_counter(conn, counter, ids.len() as u64)?;
            }
        }
        let bytes_after = read_counter(conn, META_BYTES)?;
        if evicted.total() > 0 {
            tracing::warn!(
                max_bytes,
                bytes_before,
                bytes_after,
                telemetry = evicted.telemetry,
                notice = evicted.notice,
                warning = evicted.warning,
                "outbox over quota: evicted rows"
            );
        }
        Ok(QuotaReport {
            max_bytes,
            bytes_before,
            bytes_after,
            evicted,
            buffer_full: bytes_after > max_bytes,
        })
    })
}

/// Ids of the oldest rows of `class` whose sizes add up to at least `need`
/// bytes (or all rows of the class), and the bytes they free.
fn oldest_rows_to_free(
    conn: &Connection,
    class: Class,
    need: u64,
) -> Result<(Vec<i64>, u64), OutboxError> {
    let mut scan = conn.prepare("SELECT id, size FROM outbox WHERE class = ?1 ORDER BY seq, id")?;
    let mut rows = scan.query([class.code()])?;
    let mut ids = Vec::new();
    let mut freed = 0_u64;
    while freed < need {
        let Some(row) = rows.next()? else { break };
        ids.push(row.get::<_, i64>(0)?);
        freed += to_u64(row.get::<_, i64>(1)?);
    }
    Ok((ids, freed))
}

/// Current outbox figures, read from one snapshot. Counting the backlog
/// walks the drain index (O(backlog)); meant for status calls, not per
/// message.
pub fn stats(conn: &Connection) -> Result<OutboxStats, OutboxError> {
    schema::in_read_tx(conn, |conn| {
        let mut backlog = ClassCounts::default();
        {
            let mut count =
                conn.prepare("SELECT class, COUNT(*) FROM outbox GROUP BY class ORDER BY class")?;
            let mut rows = count.query([])?;
            while let Some(row) = rows.next()? {
                let code: i64 = row.get(0)?;
                let n = to_u64(row.get(1)?);
                if let Some(class) = Class::from_code(code) {
                    *backlog.get_mut(class) += n;
                }
            }
        }
        let backlog_by_destination = destination_backlogs(conn)?;
        let oldest_undelivered_ms = conn
            .query_row(
                "SELECT created_at_ms FROM outbox ORDER BY id LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let evicted_by_class = ClassCounts {
            alarm: 0,
            warning: read_counter(conn, META_EVICTED_WARNING)?,
            notice: read_counter(conn, META_EVICTED_NOTICE)?,
            telemetry: read_counter(conn, META_EVICTED_TELEMETRY)?,
        };
        Ok(OutboxStats {
            backlog_total: backlog.total(),
            backlog_by_class: backlog,
            bytes: read_counter(conn, META_BYTES)?,
            oldest_undelivered_ms,
            delivered_total: read_counter(conn, META_DELIVERED)?,
            evicted_total: evicted_by_class.total(),
            evicted_by_class,
            requeued_total: read_counter(conn, META_REQUEUED)?,
            acks_for_missing_rows: read_counter(conn, META_ACKS_MISSING)?,
            backlog_by_destination,
        })
    })
}

/// Undelivered rows of each destination other than the platform, by name.
fn destination_backlogs(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<String, u64>, OutboxError> {
    let mut stmt = conn.prepare(
        "SELECT d.name, (SELECT COUNT(*) FROM outbox o WHERE o.dest = d.dest)
         FROM outbox_dest d WHERE d.dest <> 0",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Accounted bytes of the undelivered rows per class (reads every row: for a metrics
/// scrape, not per message).
pub fn bytes_by_class(conn: &Connection) -> Result<ClassCounts, OutboxError> {
    let mut out = ClassCounts::default();
    let mut stmt =
        conn.prepare("SELECT class, COALESCE(SUM(size), 0) FROM outbox GROUP BY class")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        if let Some(class) = Class::from_code(row.get(0)?) {
            *out.get_mut(class) += to_u64(row.get(1)?);
        }
    }
    Ok(out)
}

/// Recomputes the accounted bytes from the rows (a full scan). For checks
/// and tests; the triggers keep `outbox_meta.bytes` equal to this.
pub fn recount_bytes(conn: &Connection) -> Result<u64, OutboxError> {
    let total: i64 = conn.query_row("SELECT COALESCE(SUM(size), 0) FROM outbox", [], |row| {
        row.get(0)
    })?;
    Ok(to_u64(total))
}
