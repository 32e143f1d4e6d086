//! The disk reserve: a file of `storage.reserve_mb` MiB kept in the data directory so that a
//! gateway whose disk fills up can still record alarms.
//!
//! A full disk is rarely the gateway's own doing (logs, a camera archive, another program),
//! and it tends to be found at the worst moment: a smoke alarm that cannot be committed is
//! not published (alerts are written before they are published anywhere), and a gateway that
//! restarts on a full disk cannot even open its database. So the gateway holds back space:
//!
//! * at start-up it writes the reserve file if it is missing (incompressible bytes, so that a
//!   compressing file system cannot fake it); no room for it is a warning, not an error;
//! * when the database refuses a write for lack of disk ([`is_disk_trouble`]: SQLite's
//!   `FULL`, `IOERR` or `CANTOPEN`, not a lock held too long) — at start-up, or when the alert
//!   task commits — the reserve is **released** (deleted) once, loudly, and the write is
//!   retried at once;
//! * it is not re-created while the gateway runs: `gateway status` and the console say it is
//!   gone until someone frees space and restarts the gateway.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// File name of the reserve in the data directory.
pub const FILE_NAME: &str = "reserve.bin";

const CHUNK: usize = 1024 * 1024;

/// Why the reserve could not be written (reported as a warning: the gateway runs without it).
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("disk reserve {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `error`, or an error it wraps, is SQLite saying the disk is full or unusable
/// (`SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_CANTOPEN`) — what the reserve is for — rather than,
/// say, a lock held too long or a constraint.
pub fn is_disk_trouble(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>() {
            return matches!(
                f.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            );
        }
        next = e.source();
    }
    false
}

/// The reserve of one data directory.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// Whether the file is in place, and when it was released (ms since the epoch). A mutex,
    /// not an atomic: releasing deletes a file, and two releases must not both report it.
    state: Mutex<ReserveSnapshot>,
}

/// The reserve as `status.json` and the console report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveSnapshot {
    /// Configured size in bytes (0: no reserve).
    pub bytes: u64,
    /// The file is in place.
    pub held: bool,
    /// When it was given up because the disk was full (absent: never in this run).
    pub released_at_ms: Option<i64>,
    /// What needed the room.
    pub released_for: Option<String>,
}

impl Reserve {
    /// Makes sure `data_dir/reserve.bin` holds `bytes`; never fails: without room (or with
    /// `bytes == 0`) the gateway runs without a reserve, and says so.
    pub fn ensure(data_dir: &Path, bytes: u64) -> Reserve {
        let path = data_dir.join(FILE_NAME);
        let held = if bytes == 0 {
            // No reserve wanted: a file left by an earlier configuration is just lost space.
            let _ = std::fs::remove_file(&path);
            false
        } else {
            Self::write(&path, bytes).map_or_else(Self::warn, |()| true)
        };
        Reserve {
            path,
            bytes,
            state: Mutex::new(ReserveSnapshot {
                bytes,
                held,
                ..ReserveSnapshot::default()
            }),
        }
    }

    fn warn(e: ReserveError) -> bool {
        tracing::warn!(error = %e, "no disk reserve: a full disk will stop alarms from being recorded until space is freed");
        false
    }

    fn write(path: &Path, bytes: u64) -> Result<(), ReserveError> {
        let io = |source| ReserveError::Io {
            path: path.to_owned(),
            source,
        };
        if std::fs::metadata(path).is_ok_and(|m| m.len() == bytes) {
            return Ok(());
        }
        let result = Self::fill(path, bytes);
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result.map_err(io)
    }

    /// Writes `bytes` of xorshift noise and syncs it, so the blocks are really allocated.
    fn fill(path: &Path, bytes: u64) -> std::io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut chunk = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            for word in chunk.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    }

    /// Gives the reserve up so that `what` can be written; `true` if there was one to give
    /// (then retry the write), `false` if it was already gone.
    pub fn release(&self, what: &str) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if !state.held {
            return false;
        }
        state.held = false;
        state.released_at_ms = Some(chrono::Utc::now().timestamp_millis());
        state.released_for = Some(what.to_owned());
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::error!(
                    mb = self.bytes / (1024 * 1024),
                    what,
                    "disk full: released the disk reserve; free space in the data directory and restart the gateway to restore it"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, what, "disk full and the disk reserve could not be released");
                false
            }
        }
    }

    /// Whether the reserve has been given up in this run.
    pub fn released(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.released_at_ms.is_some())
    }

    pub fn snapshot(&self) -> ReserveSnapshot {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_once_released_once_and_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::ensure(dir.path(), 3 * 1024 * 1024 + 5);
        let path = dir.path().join(FILE_NAME);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * 1024 * 1024 + 5);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.iter().filter(|b| **b == 0).count() < bytes.len() / 100,
            "noise, not zeros a compressing file system would drop"
        );
        assert!(reserve.snapshot().held);

        // A restart finds it in place and leaves it.
        let again = Reserve::ensure(dir.path(), 3 * 1024 * 1024 + 5);
        assert!(again.snapshot().held);

        assert!(again.release("alert store"));
        assert!(!path.exists());
        assert!(!again.release("alert store"), "only once");
        let s = again.snapshot();
        assert_eq!(
            (s.held, s.released_for.as_deref()),
            (false, Some("alert store"))
        );
        assert!(s.released_at_ms.is_some());
    }

    #[test]
    fn only_a_full_or_failing_disk_counts_as_disk_trouble() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (1, x'00');",
        )
        .unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch(&format!("PRAGMA max_page_count = {pages}"))
            .unwrap();
        let full = conn
            .execute("INSERT INTO t VALUES (2, zeroblob(100000))", [])
            .unwrap_err();
        let duplicate = conn
            .execute("INSERT INTO t VALUES (1, x'00')", [])
            .unwrap_err();
        let wrapped = crate::alerts::store::StoreError::Sql(full);
        assert!(is_disk_trouble(&wrapped), "{wrapped}");
        assert!(!is_disk_trouble(&duplicate), "{duplicate}");
    }

    #[test]
    fn a_zero_reserve_removes_an_old_file_and_releases_nothing() {
        let dir = tempfile::tempdir().unwrap();
        drop(Reserve::ensure(dir.path(), 1024));
        let none = Reserve::ensure(dir.path(), 0);
        assert!(!dir.path().join(FILE_NAME).exists());
        assert!(!none.release("alert store"));
        assert_eq!(none.snapshot().bytes, 0);
    }
}
