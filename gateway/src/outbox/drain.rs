//! Drain side: hand rows out in drain order, track them in flight, ack them.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::quota::{self, OutboxStats, QuotaReport};
use super::schema::{self, bump_counter, META_ACKS_MISSING, META_DELIVERED, META_REQUEUED};
use super::{Class, OutboxError, RowId, Stream};

/// One row handed out for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Pass this back to [`Outbox::ack`] on PUBACK.
    pub id: RowId,
    pub stream: Stream,
    pub class: Class,
    pub key: String,
    pub seq: Option<u64>,
    pub created_at_ms: i64,
    pub payload: Vec<u8>,
}

/// Outcome of acknowledging a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The row existed and is now deleted; counted in `delivered_total`.
    Acked,
    /// No such row: it was acked before (duplicate PUBACK) or evicted by the
    /// quota while in flight. Not an error; counted in
    /// `acks_for_missing_rows`.
    AlreadyGone,
}

/// Row ids of one destination in drain order (class priority, then seq, then id), walked
/// on the covering `outbox_dest_drain` index without a sort.
const DRAIN_IDS: &str = "SELECT id FROM outbox WHERE dest = ?1 ORDER BY class, seq, id";

/// Deletes the rows whose ids are in the JSON array `?1`, returning the ids it deleted.
const DELETE_ACKED: &str =
    "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?1)) RETURNING id";

/// `[1,2,3]`: row ids as a JSON array for [`DELETE_ACKED`].
fn json_id_list(ids: &[RowId]) -> String {
    use std::fmt::Write as _;
    let mut list = String::with_capacity(ids.len() * 8 + 2);
    list.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        // Writing into a String cannot fail.
        let _ = write!(list, "{}", id.0);
    }
    list.push(']');
    list
}

const ROW_BY_ID: &str =
    "SELECT class, stream, seq, created_at_ms, msg_key, payload FROM outbox WHERE id = ?1";

/// Up to `limit` rows in drain order, skipping the ids in `exclude`
/// (the in-flight set), read from one snapshot.
///
/// Without an exclusion set this is a plain peek (e.g. for a CLI); it does
/// not mark anything in flight. [`Outbox::next_batch`] is the tracked
/// variant. Cost: `exclude.len() + limit` index entries at most, plus one
/// rowid lookup per returned row.
pub fn pending_rows(
    conn: &Connection,
    limit: usize,
    exclude: &HashSet<RowId>,
) -> Result<Vec<OutboxRow>, OutboxError> {
    pending_rows_of(conn, 0, limit, exclude)
}

/// [`pending_rows`] of destination `dest` (0: the platform).
pub fn pending_rows_of(
    conn: &Connection,
    dest: u8,
    limit: usize,
    exclude: &HashSet<RowId>,
) -> Result<Vec<OutboxRow>, OutboxError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    schema::in_read_tx(conn, |conn| {
        let mut ids = Vec::with_capacity(limit.min(1024));
        {
            let mut scan = conn.prepare_cached(DRAIN_IDS)?;
            let mut rows = scan.query([dest])?;
            while let Some(row) = rows.next()? {
                let id = RowId(row.get(0)?);
                if !exclude.contains(&id) {
                    ids.push(id);
                    if ids.len() == limit {
                        break;
                    }
                }
            }
        }
        let mut fetch = conn.prepare_cached(ROW_BY_ID)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let raw = fetch
                .query_row([id.0], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, Vec<u8>>(5)?,
                    ))
                })
                .optional()?;
            // Same snapshot as the scan, so the row is there; stay total anyway.
            let Some((class, stream, seq, created_at_ms, key, payload)) = raw else {
                continue;
            };
            let corrupt = |what: String| OutboxError::CorruptRow { id: id.0, what };
            out.push(OutboxRow {
                id,
                class: Class::from_code(class)
                    .ok_or_else(|| corrupt(format!("unknown class code {class}")))?,
                stream: Stream::from_code(stream)
                    .ok_or_else(|| corrupt(format!("unknown stream code {stream}")))?,
                seq: seq
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|_| corrupt(format!("negative seq {seq:?}")))?,
                created_at_ms,
                key,
                payload,
            });
        }
        Ok(out)
    })
}

/// The drain side of the outbox, owned by the uplink task.
///
/// Not `Sync`: one task drains. See the module docs for the protocol:
/// `next_batch` → publish QoS 1 → `ack` on PUBACK; `requeue_inflight` on
/// every reconnect.
#[derive(Debug)]
pub struct Outbox {
    /// The outbox's own connection to the shared database file. A separate
    /// connection (rather than sharing the alert store's) lets WAL readers
    /// run concurrently with the alert store's writes; both sides' write
    /// transactions are `BEGIN IMMEDIATE` and wait [`super::BUSY_TIMEOUT`]
    /// for each other. Runs with `synchronous=NORMAL`: a lost ack only
    /// causes a harmless re-send.
    conn: Connection,
    /// Rows handed out by `next_batch` and not yet acked. Kept in memory
    /// only, on purpose: an unacked message must be re-sent after a crash or
    /// reconnect anyway, so persisting this would cost a write per publish
    /// and buy nothing. May contain ids of rows evicted meanwhile; those
    /// leave the set on ack (as `AlreadyGone`) or on requeue.
    inflight: HashSet<RowId>,
    /// The destination whose rows this drains (0: the platform); each upstream link owns
    /// an `Outbox` of its own, so one that is down holds back none of the others.
    dest: u8,
}

impl Outbox {
    /// Opens (creating if needed) the database file, configures the
    /// connection ([`super::configure_connection`]) and migrates the tables.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OutboxError> {
        Self::from_connection(crate::db::open_writer(path.as_ref())?)
    }

    /// Uses an already opened connection; configures it and migrates.
    pub fn from_connection(mut conn: Connection) -> Result<Self, OutboxError> {
        schema::configure_connection(&mut conn)?;
        schema::migrate(&conn)?;
        Ok(Self {
            conn,
            inflight: HashSet::new(),
            dest: 0,
        })
    }

    /// Drains destination `dest` instead of the platform's rows.
    pub fn for_destination(mut self, dest: u8) -> Self {
        self.dest = dest;
        self
    }

    /// The drain connection, for read-only helpers such as [`super::stats`].
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Up to `limit` pending rows in drain order, which are then in flight:
    /// they are not handed out again until acked or requeued. Rows that were
    /// requeued come before newer rows of their class.
    pub fn next_batch(&mut self, limit: usize) -> Result<Vec<OutboxRow>, OutboxError> {
        let rows = pending_rows_of(&self.conn, self.dest, limit, &self.inflight)?;
        self.inflight.extend(rows.iter().map(|row| row.id));
        Ok(rows)
    }

    /// Acknowledges one row (PUBACK received): deletes it. Idempotent.
    pub fn ack(&mut self, id: RowId) -> Result<Delivery, OutboxError> {
        let mut outcomes = self.ack_batch(&[id])?;
        Ok(outcomes.pop().unwrap_or(Delivery::AlreadyGone))
    }

    /// Acknowledges many rows in one transaction; outcomes in input order (an id given twice
    /// is `Acked` once, then `AlreadyGone`).
    ///
    /// One `DELETE … WHERE id IN (json_each(?)) RETURNING id` statement for the whole batch,
    /// not one per row: SQLite's per-statement work (statement journal, savepoint, VDBE
    /// set-up and halt) then happens once per batch, which is most of what a per-row delete
    /// cost besides the B-tree work itself. The ids go in as one JSON array of integers.
    pub fn ack_batch(&mut self, ids: &[RowId]) -> Result<Vec<Delivery>, OutboxError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_id_list(ids);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = HashSet::with_capacity(ids.len());
        {
            let mut delete = tx.prepare_cached(DELETE_ACKED)?;
            let mut rows = delete.query([&list])?;
            while let Some(row) = rows.next()? {
                deleted.insert(RowId(row.get(0)?));
            }
        }
        let acked = deleted.len() as u64;
        bump_counter(&tx, META_DELIVERED, acked)?;
        bump_counter(&tx, META_ACKS_MISSING, ids.len() as u64 - acked)?;
        tx.commit()?;
        let outcomes = ids
            .iter()
            .map(|id| {
                self.inflight.remove(id);
                if deleted.remove(id) {
                    Delivery::Acked
                } else {
                    Delivery::AlreadyGone
                }
            })
            .collect();
        Ok(outcomes)
    }

    /// Makes every in-flight row pending again (call on reconnect); they are
    /// handed out again in their original order, before newer rows of their
    /// class. Returns how many rows were requeued.
    ///
    /// Infallible by design: the in-memory requeue is what matters; if
    /// persisting the `requeued_total` counter fails, that is logged, so a
    /// reconnect never stalls on a statistics write.
    pub fn requeue_inflight(&mut self) -> usize {
        let n = self.inflight.len();
        self.inflight.clear();
        if n > 0 {
            if let Err(err) =
                schema::in_write_tx(&self.conn, |c| bump_counter(c, META_REQUEUED, n as u64))
            {
                tracing::warn!(error = %err, requeued = n, "outbox: could not count requeued rows");
            }
        }
        n
    }

    /// Number of rows handed out and not yet acked or requeued.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Whether `id` is currently in flight.
    pub fn is_inflight(&self, id: RowId) -> bool {
        self.inflight.contains(&id)
    }

    /// [`super::stats`] on the drain connection.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        quota::stats(&self.conn)
    }

    /// [`super::enforce_quota`] on the drain connection.
    pub fn enforce_quota(&mut self, max_bytes: u64) -> Result<QuotaReport, OutboxError> {
        quota::enforce_quota(&self.conn, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let details: Vec<String> = stmt
            .query_map([], |row| row.get::<_, String>(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        details.join("; ")
    }

    #[test]
    fn drain_and_eviction_scans_use_the_index_without_sorting() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let outbox = Outbox::open(dir.path().join("plan.db")).expect("open");
        let conn = outbox.connection();

        let drain = plan(conn, &DRAIN_IDS.replace("?1", "1"));
        assert!(
            drain.contains("COVERING INDEX outbox_dest_drain"),
            "{drain}"
        );
        assert!(!drain.contains("TEMP B-TREE"), "{drain}");

        let evict = plan(
            conn,
            "SELECT id, size FROM outbox WHERE class = 3 ORDER BY seq, id",
        );
        assert!(evict.contains("INDEX outbox_drain"), "{evict}");
        assert!(!evict.contains("TEMP B-TREE"), "{evict}");

        let oldest = plan(conn, "SELECT created_at_ms FROM outbox ORDER BY id LIMIT 1");
        assert!(!oldest.contains("TEMP B-TREE"), "{oldest}");
    }
}
