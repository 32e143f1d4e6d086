//! The gateway's one SQLite database: alerts, the outbox and device state share a file so an
//! alert and its outbox row commit in one transaction.

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

/// Opens (creating if needed) the database with the gateway's pragmas.
///
/// WAL lets the uplink read the outbox while the alert writer commits; `synchronous=NORMAL`
/// is the connection default, and alarm transactions raise it to FULL for themselves.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path).map_err(|source| DbError::Open {
        path: path.to_owned(),
        source,
    })?;
    let sql = |source| DbError::Sql {
        path: path.to_owned(),
        source,
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sql)?;
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
