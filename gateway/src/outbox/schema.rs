//! Tables, triggers, connection settings and the small SQL helpers shared by
//! the write and drain sides.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{to_u64, OutboxError};

/// Version of the outbox tables, stored in `outbox_meta.schema_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// How long a connection configured by [`configure_connection`] waits for
/// SQLite's write lock (held by the other side's transaction) before failing
/// with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
pub(crate) const META_BYTES: &str = "bytes";
pub(crate) const META_DELIVERED: &str = "delivered_total";
pub(crate) const META_REQUEUED: &str = "requeued_total";
pub(crate) const META_ACKS_MISSING: &str = "acks_for_missing_rows";
pub(crate) const META_EVICTED_WARNING: &str = "evicted_warning";
pub(crate) const META_EVICTED_NOTICE: &str = "evicted_notice";
pub(crate) const META_EVICTED_TELEMETRY: &str = "evicted_telemetry";

const CREATE_V1: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    class         INTEGER NOT NULL CHECK (class BETWEEN 0 AND 3),
    stream        INTEGER NOT NULL CHECK (stream IN (0, 1)),
    seq           INTEGER CHECK (seq IS NULL OR seq >= 0),
    created_at_ms INTEGER NOT NULL,
    size          INTEGER NOT NULL CHECK (size > 0),
    msg_key       TEXT    NOT NULL,
    payload       BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_drain ON outbox (class, seq);
CREATE TABLE IF NOT EXISTS outbox_meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS outbox_bytes_insert AFTER INSERT ON outbox BEGIN
    UPDATE outbox_meta SET value = value + NEW.size WHERE name = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS outbox_bytes_delete AFTER DELETE ON outbox BEGIN
    UPDATE outbox_meta SET value = value - OLD.size WHERE name = 'bytes';
END;
INSERT OR IGNORE INTO outbox_meta (name, value) VALUES
    ('schema_version', 1),
    ('bytes', 0),
    ('delivered_total', 0),
    ('requeued_total', 0),
    ('acks_for_missing_rows', 0),
    ('evicted_warning', 0),
    ('evicted_notice', 0),
    ('evicted_telemetry', 0);
";

/// Sets up a connection for the outbox's database file: WAL journal,
/// [`BUSY_TIMEOUT`], and `synchronous=NORMAL` as the baseline (alert
/// transactions raise it to FULL through [`super::commit_with`]; acks and
/// evictions are fine with NORMAL, see the module docs).
///
/// Must be called outside a transaction.
/// Version 2: destinations. Every message is stored once per registered destination that
/// takes its stream (`outbox_dest`), and each destination drains its own rows (`dest`): an
/// upstream that is down holds back none of the others. Rows of version 1 belong to the
/// platform (destination 0).
const CREATE_V2: &str = "
ALTER TABLE outbox ADD COLUMN dest INTEGER NOT NULL DEFAULT 0 CHECK (dest >= 0);
CREATE INDEX IF NOT EXISTS outbox_dest_drain ON outbox (dest, class, seq);
CREATE TABLE IF NOT EXISTS outbox_dest (
    dest    INTEGER PRIMARY KEY,
    name    TEXT    NOT NULL,
    streams INTEGER NOT NULL
);
INSERT OR IGNORE INTO outbox_dest (dest, name, streams) VALUES (0, 'platform', 3);
UPDATE outbox_meta SET value = 2 WHERE name = 'schema_version';
";

pub fn configure_connection(conn: &mut Connection) -> Result<(), OutboxError> {
    if !conn.is_autocommit() {
        return Err(OutboxError::TransactionAlreadyOpen);
    }
    let mode = crate::db::configure(conn)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::NotWal(mode));
    }
    Ok(())
}

/// Creates the outbox tables, index and triggers if they do not exist, and
/// checks the schema version. Idempotent; safe to call on every start, also
/// inside the caller's transaction (it then runs in a savepoint).
pub fn migrate(conn: &Connection) -> Result<(), OutboxError> {
    in_write_tx(conn, |conn| {
        let meta_exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox_meta')",
            [],
            |row| row.get(0),
        )?;
        if meta_exists {
            let found: Option<i64> = conn
                .query_row(
                    "SELECT value FROM outbox_meta WHERE name = ?1",
                    [META_SCHEMA_VERSION],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(found) = found {
                if found > SCHEMA_VERSION {
                    return Err(OutboxError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        conn.execute_batch(CREATE_V1)?;
        let version: i64 = conn.query_row(
            "SELECT value FROM outbox_meta WHERE name = ?1",
            [META_SCHEMA_VERSION],
            |row| row.get(0),
        )?;
        if version < 2 {
            conn.execute_batch(CREATE_V2)?;
        }
        Ok(())
    })
}

/// Runs `f` atomically as a write: in its own `BEGIN IMMEDIATE` transaction
/// when the connection is in autocommit mode, otherwise inside a savepoint of
/// the caller's transaction (so a failure undoes only `f`'s changes).
pub(crate) fn in_write_tx<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, OutboxError>,
) -> Result<T, OutboxError> {
    if conn.is_autocommit() {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    } else {
        conn.execute_batch("SAVEPOINT outbox_write")?;
        match f(conn) {
            Ok(value) => {
                conn.execute_batch("RELEASE outbox_write")?;
                Ok(value)
            }
            Err(err) => {
                // Best effort: the original error is the one worth reporting.
                let _ = conn.execute_batch("ROLLBACK TO outbox_write; RELEASE outbox_write");
                Err(err)
            }
        }
    }
}

/// Runs `f` on one consistent snapshot: a deferred read transaction when the
/// connection is in autocommit mode, the caller's transaction otherwise.
pub(crate) fn in_read_tx<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, OutboxError>,
) -> Result<T, OutboxError> {
    if conn.is_autocommit() {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    } else {
        f(conn)
    }
}

pub(crate) fn read_counter(conn: &Connection, name: &str) -> Result<u64, OutboxError> {
    let value: Option<i64> = conn
        .query_row(
            "SELECT value FROM outbox_meta WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .optional()?;
    Ok(value.map_or(0, to_u64))
}

pub(crate) fn bump_counter(conn: &Connection, name: &str, delta: u64) -> Result<(), OutboxError> {
    if delta == 0 {
        return Ok(());
    }
    let delta = i64::try_from(delta).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO outbox_meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(rusqlite::params![name, delta])?;
    Ok(())
}

/// Human name of a `PRAGMA synchronous` value.
pub(crate) fn synchronous_name(level: i64) -> &'static str {
    match level {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "UNKNOWN",
    }
}

pub(crate) fn read_synchronous(conn: &Connection) -> Result<i64, OutboxError> {
    Ok(conn.pragma_query_value(None, "synchronous", |row| row.get(0))?)
}
