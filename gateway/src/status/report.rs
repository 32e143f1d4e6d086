//! `gateway status`: the outbox as stored and every stage as the running daemon last
//! reported it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{StatusError, StatusFile, STALE_AFTER, STATUS_FILE};
use crate::alerts::task::AlertStoreSnapshot;
use crate::ingest::StatsSnapshot;
use crate::outbox::{self, OutboxStats};
use crate::reserve::ReserveSnapshot;
use crate::supervise::{SelfTestSnapshot, StageHealth};
use crate::uplink::{now_ms, LinkSnapshot};
use crate::video::StatsSnapshot as CameraSnapshot;

/// What `gateway status` shows: the outbox as stored (read-only from the database) and the
/// link as the running daemon last reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub data_dir: PathBuf,
    /// The daemon wrote its status file within [`STALE_AFTER`].
    pub running: bool,
    /// The status file is stale but the gateway process that wrote it still runs: it cannot
    /// write to its data directory (a full disk, most likely).
    pub stale_but_alive: bool,
    /// When the daemon last wrote `status.json` (absent: never).
    pub status_updated_at_ms: Option<i64>,
    /// The link as last reported (absent when there is no status file).
    pub link: Option<LinkSnapshot>,
    /// The running daemon's street station link, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station_link: Option<LinkSnapshot>,
    /// Backlog, bytes, delivered/evicted/requeued counters: always read from the database.
    pub outbox: OutboxStats,
    /// Age of the oldest undelivered row, seconds.
    pub oldest_undelivered_age_s: Option<f64>,
    /// Sensor messages accepted and rejected (per reason, per device) by the running daemon
    /// since it started (absent when it is not running).
    pub ingest: Option<StatsSnapshot>,
    /// Alert events the running daemon could not record yet (absent when it is not running).
    pub alert_store: Option<AlertStoreSnapshot>,
    /// The running daemon's disk reserve (absent when it is not running or keeps none).
    pub reserve: Option<ReserveSnapshot>,
    /// The running daemon's stages, as supervised (absent when it is not running).
    pub stages: Option<BTreeMap<String, StageHealth>>,
    /// The last end-to-end self-test round trip (absent when the daemon is not running).
    pub self_test: Option<SelfTestSnapshot>,
    /// The running daemon's cameras (empty when it is not running or analyses none).
    pub cameras: BTreeMap<String, CameraSnapshot>,
}

/// Reads the status of the gateway whose data directory is `data_dir`, without disturbing a
/// running daemon: the database is opened read-only (WAL readers never block the writer) and
/// `status.json` is read if present.
pub fn status_report(data_dir: &Path) -> Result<StatusReport, StatusError> {
    let db_path = data_dir.join(crate::db::FILE_NAME);
    let db_err = |source| StatusError::Database {
        path: db_path.clone(),
        source,
    };
    let conn = crate::db::open_reader(&db_path).map_err(db_err)?;
    let stats = outbox::stats(&conn)?;
    let now = now_ms();
    let file = match StatusFile::read(&data_dir.join(STATUS_FILE)) {
        Ok(file) => Some(file),
        Err(StatusError::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(e) => return Err(e),
    };
    let running = file.as_ref().is_some_and(|f| {
        now.saturating_sub(f.updated_at_ms) <= i64::try_from(STALE_AFTER.as_millis()).unwrap_or(0)
    });
    let stale_but_alive = !running && file.as_ref().is_some_and(|f| gateway_alive(f.pid));
    // A stopped daemon's counters are history: shown only while it runs.
    let live = file.as_ref().filter(|_| running);
    Ok(StatusReport {
        data_dir: data_dir.to_owned(),
        running,
        stale_but_alive,
        status_updated_at_ms: file.as_ref().map(|f| f.updated_at_ms),
        ingest: live.and_then(|f| f.ingest.clone()),
        alert_store: live.and_then(|f| f.alert_store.clone()),
        reserve: live.and_then(|f| f.reserve.clone()),
        stages: live.and_then(|f| f.health.as_ref().map(|h| h.stages.clone())),
        self_test: live.and_then(|f| f.health.as_ref().and_then(|h| h.self_test.clone())),
        cameras: live.map(|f| f.cameras.clone()).unwrap_or_default(),
        station_link: live.and_then(|f| f.station_link.clone()),
        link: file.map(|f| f.link),
        oldest_undelivered_age_s: stats
            .oldest_undelivered_ms
            .map(|t| (now.saturating_sub(t)).max(0) as f64 / 1000.0),
        outbox: stats,
    })
}

/// Whether process `pid` exists and is a gateway (its command name says so, so that a pid
/// reused by another program after a reboot does not count). Linux only; elsewhere `false`.
pub fn gateway_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == env!("CARGO_PKG_NAME"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{commit_with, enqueue_batch, Class, Durability, NewMessage, Outbox};
    use crate::uplink::{LinkState, UplinkStatus};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const KEY: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    /// A status file written `age_ms` ago by process `pid`, with no link and no counters.
    fn status_file(pid: u32, age_ms: i64) -> StatusFile {
        StatusFile {
            station_link: None,
            pid,
            updated_at_ms: now_ms() - age_ms,
            link: UplinkStatus::new(None).snapshot(),
            ingest: None,
            alert_store: None,
            reserve: None,
            health: None,
            cameras: BTreeMap::new(),
            broker: None,
        }
    }

    #[test]
    fn status_reads_the_backlog_from_the_database_and_the_link_from_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(crate::db::FILE_NAME);
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        drop(Outbox::open(&db).unwrap());
        commit_with(&mut conn, Durability::Full, |tx| {
            let now = now_ms();
            enqueue_batch(
                tx,
                &[
                    NewMessage::alert(Class::Alarm, KEY, 1, b"{}".to_vec(), now - 5_000),
                    NewMessage::telemetry(KEY, b"{}".to_vec(), now),
                ],
            )
        })
        .unwrap();

        let before = status_report(dir.path()).unwrap();
        assert!(!before.running);
        assert_eq!(before.link, None);
        assert_eq!(before.outbox.backlog_total, 2);
        assert!(before.oldest_undelivered_age_s.unwrap() >= 4.9);
        assert!(
            before.to_string().contains("not running (no status file)"),
            "{before}"
        );

        let status = UplinkStatus::new(None);
        status.buffer_full.store(true, Ordering::Relaxed);
        StatusFile {
            link: status.snapshot(),
            ..status_file(std::process::id(), 0)
        }
        .write(&dir.path().join(STATUS_FILE))
        .unwrap();
        let after = status_report(dir.path()).unwrap();
        assert!(after.running);
        assert_eq!(
            after.link.as_ref().map(|l| l.state),
            Some(LinkState::Disabled)
        );
        let text = after.to_string();
        assert!(text.contains("backlog:     2 rows (alarm 1"), "{text}");
        assert!(text.contains("buffer_full: YES"), "{text}");
        let json = serde_json::to_value(&after).unwrap();
        assert_eq!(json["outbox"]["backlog_total"], 2);
        assert_eq!(json["link"]["state"], "disabled");
    }

    #[test]
    fn status_says_when_alert_events_wait_for_a_database_that_refused_them() {
        let dir = tempfile::tempdir().unwrap();
        drop(Outbox::open(dir.path().join(crate::db::FILE_NAME)).unwrap());
        let mut file = StatusFile {
            alert_store: Some(AlertStoreSnapshot::default()),
            ..status_file(1, 0)
        };
        file.write(&dir.path().join(STATUS_FILE)).unwrap();
        let healthy = status_report(dir.path()).unwrap().to_string();
        assert!(!healthy.contains("alert store"), "{healthy}");

        file.alert_store = Some(AlertStoreSnapshot {
            deferred: 2,
            failures_total: 7,
            dropped_total: 0,
            last_error: Some("alert store: database or disk is full".to_owned()),
        });
        file.write(&dir.path().join(STATUS_FILE)).unwrap();
        let report = status_report(dir.path()).unwrap();
        let text = report.to_string();
        assert!(
            text.contains(
                "alert store: 2 events waiting for the database, 7 failed writes, 0 dropped; \
                 last error: alert store: database or disk is full"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["alert_store"]["deferred"], 2);

        file.reserve = Some(ReserveSnapshot {
            bytes: 16 * 1024 * 1024,
            held: false,
            released_at_ms: Some(now_ms() - 90_000),
            released_for: Some("recording alert events".to_owned()),
        });
        file.write(&dir.path().join(STATUS_FILE)).unwrap();
        let text = status_report(dir.path()).unwrap().to_string();
        assert!(
            text.contains("disk reserve: RELEASED 90.")
                && text.contains("for recording alert events (the disk filled up)"),
            "{text}"
        );
    }

    #[test]
    fn a_stale_status_file_means_the_daemon_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        drop(Outbox::open(dir.path().join(crate::db::FILE_NAME)).unwrap());
        status_file(1, 60_000)
            .write(&dir.path().join(STATUS_FILE))
            .unwrap();
        let report = status_report(dir.path()).unwrap();
        assert!(!report.running);
        assert!(
            report.to_string().contains("uplink:      unknown"),
            "{report}"
        );
    }

    #[test]
    fn a_stale_status_file_of_a_gateway_still_running_points_at_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        drop(Outbox::open(dir.path().join(crate::db::FILE_NAME)).unwrap());
        // A process whose command name is `gateway`, like the daemon's.
        let exe = dir.path().join("gateway");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut daemon = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        // Until it has exec'd, the child still carries the test binary's name.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gateway_alive(daemon.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never became `gateway`"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        status_file(daemon.id(), 60_000)
            .write(&dir.path().join(STATUS_FILE))
            .unwrap();
        let stuck = status_report(dir.path()).unwrap();
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        let gone = status_report(dir.path()).unwrap();

        assert!((!stuck.running && stuck.stale_but_alive), "{stuck:?}");
        let text = stuck.to_string();
        assert!(
            text.contains("running, but it last wrote its status 60.")
                && text.contains("disk full?"),
            "{text}"
        );
        assert!(!gone.stale_but_alive);
        assert!(
            gone.to_string().contains("not running (last status"),
            "{gone}"
        );
    }

    #[test]
    fn a_missing_database_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = status_report(dir.path()).unwrap_err().to_string();
        assert!(err.contains(crate::db::FILE_NAME), "{err}");
    }
}
