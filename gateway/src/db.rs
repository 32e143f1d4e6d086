//! The gateway's one SQLite database: alerts, the outbox and device state share a file so an
//! alert and its outbox row commit in one transaction.
//!
//! Every connection is opened here, by [`open_writer`] or [`open_reader`], with one set of
//! pragmas: WAL (readers never block the writer and the writer never blocks readers), a 5 s
//! busy timeout (writers take turns), `synchronous=NORMAL` as the baseline that alarm
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
//! meaning, only in time. Schemas: the alert tables are created if missing
//! (`alerts::store`), the outbox checks its own schema version (`outbox::schema`).

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
}

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "shouwang.db";

/// How long a connection waits for another writer's transaction.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens (creating if needed) the database with the gateway's pragmas: the daemon's own
/// connection, held from start to the final checkpoint.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let conn = open_writer(path).map_err(|source| DbError::Open {
        path: path.to_owned(),
        source,
    })?;
    restrict_files(path).map_err(|source| DbError::Permissions {
        path: path.to_owned(),
        source,
    })?;
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
    let conn = Connection::open(path)?;
    configure(&conn)?;
    Ok(conn)
}

/// A read-only connection (no WAL change, no schema work): readers never write.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The gateway's pragmas on a read-write connection; returns the journal mode SQLite
/// actually set (a file system without shared memory may refuse WAL).
pub fn configure(conn: &Connection) -> rusqlite::Result<String> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
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
}
