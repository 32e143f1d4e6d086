//! The gateway's one SQLite database: alerts, the outbox and device state share a file so an
//! alert and its outbox row commit in one transaction.
//!
//! Every connection is opened here, by [`open_writer`] or [`open_reader`], with one set of
//! pragmas: WAL (readers never block the writer and the writer never blocks readers), a 5 s
//! busy timeout with fine-grained retries (writers take turns; see [`busy_pause`]), `synchronous=NORMAL` as the baseline that alarm
//! transactions raise to FULL for themselves ([`crate::outbox::commit_with`]), foreign keys on.
//!
//! # Who writes what
//!
//! | connection | opened by | writes |
//! |---|---|---|
//! | alert writer | the alert task ([`crate::alerts::AlertStore`]) | `alerts`, `alert_events`, `alerts_meta` (seq, self-test probe), the alert rows of `outbox` — each event in one FULL transaction |
//! | telemetry writer | [`crate::telemetry`] | the telemetry rows of `outbox`, in batches (NORMAL) |
//! | outbox drain | the uplink and housekeeping ([`crate::outbox`]) | marks rows in flight, deletes acknowledged rows, evicts over quota, `outbox_meta` counters |
//! | resident links | `gateway residents qr` and the console ([`crate::residents::links`]) | `resident_links` |
//! | readers | console, resident pages, `gateway status` | nothing (read-only connections) |
//! | the daemon's own | `gateway run` | nothing; it holds the file from start to the final WAL checkpoint ([`close`]) |
//!
//! SQLite serialises the writers (one write transaction at a time, the others wait up to the
//! busy timeout); each writer owns distinct rows, so their transactions never conflict in
//! meaning, only in time.
//!
//! # Schema versions
//!
//! The alert tables (`alerts`, `alert_events`, `alerts_meta`) and `resident_links` are
//! versioned here by `PRAGMA user_version`: [`MIGRATIONS`] is the ordered list of steps,
//! [`migrate`] applies the missing ones all in one transaction with the version they bring
//! the file to (a failure in any step leaves the file exactly as it was, at its old version,
//! for the old binary or a fixed new one), and refuses a file whose version is newer than this gateway knows
//! ([`DbError::TooNew`]) rather than use it half-understood. Version 1 is the schema as it was
//! created before versioning, written `IF NOT EXISTS`, so a database from then (version 0,
//! its tables present) is stamped version 1 unchanged, rows intact. A new schema change is a
//! new entry at the end, never an edit of an old one. Writers of these tables migrate before
//! first use ([`open`] for the daemon, the alert store, resident links). The outbox tables
//! carry their own version in `outbox_meta.schema_version` (`outbox::schema`), checked the
//! same way.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// Errors opening or closing the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot make it private: {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this gateway knows \
         ({supported}): it was written by a newer gateway; run that version or restore a \
         backup — it is not used"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("database {path}: schema migration to version {version} failed: {source}")]
    Migrate {
        path: PathBuf,
        version: u32,
        source: rusqlite::Error,
    },
}

/// One step of the schema: applied once, in order, in the one transaction of [`migrate`]
/// that also sets `PRAGMA user_version` to the last step's `version`.
pub struct Migration {
    pub version: u32,
    /// What it changes, for the log.
    pub what: &'static str,
    pub sql: &'static str,
}

/// Every schema step, oldest first (see [Schema versions](self#schema-versions)).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "alerts, alert_events, alerts_meta, resident_links (the schema before versioning)",
        sql: SCHEMA_V1,
    },
    Migration {
        version: 2,
        what: "remote_alerts, remote_compounds: a street station's copy of its compounds' alerts and their last heartbeat",
        sql: SCHEMA_V2,
    },
];

/// The schema version this gateway writes: the last of [`MIGRATIONS`].
pub const SCHEMA_VERSION: u32 = 2;

/// Version 2: a street station's compounds' alert events (see `alerts::remote`).
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS remote_alerts (
    id TEXT PRIMARY KEY,
    compound TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL,
    state TEXT NOT NULL,
    active INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS remote_alerts_by_compound ON remote_alerts (compound, active, updated_at);
CREATE TABLE IF NOT EXISTS remote_compounds (
    compound TEXT PRIMARY KEY,
    heartbeat_at TEXT NOT NULL,
    body TEXT NOT NULL
);
";

/// Version 1, exactly as the alert store and resident links created it before versioning.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    active INTEGER NOT NULL,
    level TEXT NOT NULL,
    state TEXT NOT NULL,
    raised_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_active ON alerts (source, kind) WHERE active = 1;
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (raised_at);
CREATE TABLE IF NOT EXISTS alert_events (
    seq INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO alerts_meta (name, value) VALUES ('next_seq', 1);
CREATE TABLE IF NOT EXISTS resident_links (
    building TEXT NOT NULL,
    unit TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS resident_links_unit ON resident_links (building, unit);
";

/// Brings the database of `conn` to [`SCHEMA_VERSION`]; returns the version it found. A
/// file from a newer gateway is refused ([`DbError::TooNew`]). Must be called outside a
/// transaction.
pub fn migrate(conn: &Connection) -> Result<u32, DbError> {
    let path = PathBuf::from(conn.path().unwrap_or(":memory:"));
    let sql = |source| DbError::Sql {
        path: path.clone(),
        source,
    };
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    if found > SCHEMA_VERSION {
        return Err(DbError::TooNew {
            path,
            found,
            supported: SCHEMA_VERSION,
        });
    }
    migrate_steps(conn, MIGRATIONS).map_err(|(version, source)| DbError::Migrate {
        path,
        version,
        source,
    })?;
    Ok(found)
}

/// Every step of `steps` newer than the file's version, and the last one's version stamp, in
/// one immediate transaction (a concurrent opener waits, then finds the version set and
/// skips them). On failure: the version of the step that failed, nothing changed.
fn migrate_steps(conn: &Connection, steps: &[Migration]) -> Result<(), (u32, rusqlite::Error)> {
    let first = steps.first().map_or(0, |s| s.version);
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| (first, e))?;
    let now: u32 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| (first, e))?;
    let mut applied = Vec::new();
    for step in steps.iter().filter(|m| m.version > now) {
        tx.execute_batch(step.sql)
            .and_then(|()| tx.pragma_update(None, "user_version", step.version))
            .map_err(|e| (step.version, e))?;
        applied.push(step);
    }
    let last = applied.last().map_or(first, |s| s.version);
    tx.commit().map_err(|e| (last, e))?;
    for step in applied {
        tracing::info!(
            version = step.version,
            what = step.what,
            "database schema migrated"
        );
    }
    Ok(())
}

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "shouwang.db";

/// How long a connection waits for another writer's transaction.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// First pause of [`busy_wait`]; each next one doubles up to [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE_MIN: std::time::Duration = std::time::Duration::from_micros(20);
const BUSY_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// The pause before try `attempt + 1` of a statement another writer keeps busy, `None` once
/// the pauses so far add up to [`BUSY_TIMEOUT`].
///
/// SQLite's own handler (what `busy_timeout` installs) sleeps 1, 2, 5, 10 … ms between tries.
/// The writers' transactions take tens of microseconds (telemetry batches commit with
/// `synchronous=NORMAL`, no fsync), and a smoke reading reaches the telemetry writer and the
/// alert task together: their commits met on nearly every alarm, and the alarm's FULL commit
/// slept a whole millisecond or more each time (issue 18, the idle alarm latency). These
/// pauses start at 20 µs and double to 1 ms, for the same total.
pub fn busy_pause(attempt: u32) -> Option<std::time::Duration> {
    let pause = |n: u32| {
        BUSY_PAUSE_MIN
            .saturating_mul(1 << n.min(16))
            .min(BUSY_PAUSE_MAX)
    };
    let waited: std::time::Duration = (0..attempt).map(pause).sum();
    (waited < BUSY_TIMEOUT).then(|| pause(attempt))
}

/// The busy handler of every connection: see [`busy_pause`].
fn busy_wait(attempt: i32) -> bool {
    match busy_pause(attempt.max(0) as u32) {
        Some(pause) => {
            std::thread::sleep(pause);
            true
        }
        None => false,
    }
}

/// Opens (creating if needed) the database with the gateway's pragmas and brings its
/// schema up to date ([`migrate`]): the daemon's own connection, held from start to the
/// final checkpoint.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let conn = open_writer(path).map_err(|source| DbError::Open {
        path: path.to_owned(),
        source,
    })?;
    restrict_files(path).map_err(|source| DbError::Permissions {
        path: path.to_owned(),
        source,
    })?;
    migrate(&conn)?;
    Ok(conn)
}

/// The database and its WAL and shared-memory files are readable by their owner only
/// (alerts name flats and people; an older install may have left them world-readable).
fn restrict_files(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match crate::os::restrict(Path::new(&file), 0o600) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A read-write connection with the gateway's pragmas (see the [module docs](self)).
pub fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    configure(&mut conn)?;
    Ok(conn)
}

/// A read-only connection (no WAL change, no schema work): readers never write.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_handler(Some(busy_wait))?;
    Ok(conn)
}

/// The gateway's pragmas on a read-write connection; returns the journal mode SQLite
/// actually set (a file system without shared memory may refuse WAL).
pub fn configure(conn: &mut Connection) -> rusqlite::Result<String> {
    conn.busy_handler(Some(busy_wait))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(mode)
}

/// Checkpoints the WAL into the main file and closes the connection: the last step of a
/// graceful shutdown, so the next start does not replay a large WAL.
pub fn close(conn: Connection, path: &Path) -> Result<(), DbError> {
    let sql = |source| DbError::Sql {
        path: path.to_owned(),
        source,
    };
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sql)?;
    conn.close().map_err(|(_, source)| sql(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_retries_start_at_tens_of_microseconds_and_give_up_after_the_busy_timeout() {
        let us = |a| busy_pause(a).map(|p| p.as_micros());
        assert_eq!((us(0), us(1), us(2)), (Some(20), Some(40), Some(80)));
        assert_eq!(us(50), Some(1000), "pauses level off at 1 ms");
        let tries = (0..).take_while(|&a| busy_pause(a).is_some()).count() as u32;
        let total: std::time::Duration = (0..tries).filter_map(busy_pause).sum();
        assert!(total >= BUSY_TIMEOUT, "gave up after {total:?}");
        assert!(
            total < BUSY_TIMEOUT + BUSY_PAUSE_MAX * 2,
            "waited {total:?}"
        );
    }

    #[test]
    fn a_writer_waits_for_another_writers_transaction_and_then_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let a = open(&path).unwrap();
        let mut b = open_writer(&path).unwrap();
        let (held, release) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let tx = b
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            held.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            tx.commit().unwrap();
        });
        release.recv().unwrap();
        a.execute_batch("BEGIN IMMEDIATE; CREATE TABLE t (x); COMMIT")
            .expect("the handler retried until the other writer committed");
        holder.join().unwrap();
    }

    #[test]
    fn database_opens_in_wal_mode_and_closes_with_an_empty_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let conn = open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for file in [FILE_NAME.to_owned(), format!("{FILE_NAME}-wal")] {
            let mode = std::fs::metadata(dir.path().join(&file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is private");
        }
        close(conn, &path).unwrap();
        let wal = dir.path().join(format!("{FILE_NAME}-wal"));
        let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(wal_len, 0, "WAL should be checkpointed and truncated");
    }

    /// The alert tables exactly as the gateway created them before schema versions.
    const UNVERSIONED: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, active INTEGER NOT NULL,
    level TEXT NOT NULL, state TEXT NOT NULL, raised_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_active ON alerts (source, kind) WHERE active = 1;
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (raised_at);
CREATE TABLE IF NOT EXISTS alert_events (
    seq INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, event TEXT NOT NULL, at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO alerts_meta (name, value) VALUES ('next_seq', 1);
CREATE TABLE IF NOT EXISTS resident_links (
    building TEXT NOT NULL, unit TEXT NOT NULL, token_hash BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS resident_links_unit ON resident_links (building, unit);
INSERT INTO alerts VALUES ('01A', 'device:b1-smoke', 'smoke', 1, 'red', 'raised',
    '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', '{}');
INSERT INTO alert_events VALUES (1, '01A', 'raised', '2026-01-01T00:00:00.000Z', '{}');
UPDATE alerts_meta SET value = 2 WHERE name = 'next_seq';
INSERT INTO resident_links VALUES ('b1', 'u1', x'00', '2026-01-01T00:00:00.000Z', 0);
";

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_database_from_before_schema_versions_migrates_to_the_current_version_with_its_rows_intact()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(UNVERSIONED).unwrap();
        }
        let conn = open(&path).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            count(&conn, "remote_alerts"),
            0,
            "version 2's table is there"
        );
        assert_eq!(count(&conn, "alerts"), 1);
        assert_eq!(count(&conn, "alert_events"), 1);
        assert_eq!(count(&conn, "resident_links"), 1);
        let next_seq: i64 = conn
            .query_row(
                "SELECT value FROM alerts_meta WHERE name = 'next_seq'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(next_seq, 2, "the sequence goes on where it was");
        assert_eq!(
            migrate(&conn).unwrap(),
            SCHEMA_VERSION,
            "a second open finds the current version"
        );
        let store = crate::alerts::AlertStore::open(&path);
        assert!(store.is_ok(), "the alert store opens it: {:?}", store.err());
    }

    #[test]
    fn migrations_are_all_or_nothing_a_failing_later_step_leaves_the_file_at_its_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let step = |version, sql| Migration {
            version,
            what: "test",
            sql,
        };
        let steps = [
            step(1, "CREATE TABLE a (x INTEGER);"),
            step(2, "CREATE TABLE b (x INTEGER); INSERT INTO b VALUES (1);"),
            step(3, "CREATE TABLE c (x INTEGER); THIS IS NOT SQL;"),
        ];
        let (failed, _) = migrate_steps(&conn, &steps).unwrap_err();
        assert_eq!(failed, 3, "the error names the step that failed");
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0, "no step's version was kept");
        let tables: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0, "no earlier step's table was kept");
        migrate_steps(&conn, &steps[..2]).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2, "the good steps apply together");
    }

    #[test]
    fn a_database_from_a_newer_gateway_is_refused_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let newer = Connection::open(&path).unwrap();
            newer
                .execute_batch(
                    "CREATE TABLE alerts (id TEXT PRIMARY KEY, v2 BLOB); PRAGMA user_version = 7;",
                )
                .unwrap();
        }
        let err = open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DbError::TooNew {
                    found: 7,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("schema version 7") && text.contains("newer gateway"),
            "{text}"
        );
        let store = crate::alerts::AlertStore::open(&path);
        assert!(store.is_err(), "the alert store refuses it too");
        let conn = Connection::open(&path).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 7, "left as it was");
    }
}
