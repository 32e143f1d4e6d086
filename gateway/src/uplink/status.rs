//! Link state and counters: live ([`UplinkStatus`]), persisted every second
//! ([`StatusFile`], `status.json`) and read back for `gateway status` ([`status_report`]).

use crate::alerts::task::AlertStoreSnapshot;
use crate::ingest::StatsSnapshot;
use crate::reserve::ReserveSnapshot;
use std::fmt;

use std::collections::BTreeMap;

use crate::supervise::{HealthSnapshot, SelfTestSnapshot, Severity, StageHealth};
use crate::video::StatsSnapshot as CameraSnapshot;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LinkSettings, UplinkError};
use crate::outbox::{self, OutboxStats};

/// File name of the status snapshot in the data directory.
pub const STATUS_FILE: &str = "status.json";

/// A status file older than this means the daemon is not running (it rewrites it every
/// second).
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No `[uplink]` (or `enabled = false`): alerts stay in the local outbox.
    Disabled,
    /// TCP/TLS/MQTT handshake in progress.
    Connecting,
    /// CONNACK received; draining.
    Connected,
    /// Waiting before the next attempt after a failure.
    Backoff,
    /// The link task has stopped (shutdown).
    Stopped,
}

impl LinkState {
    pub const fn as_str(self) -> &'static str {
        match self {
            LinkState::Disabled => "disabled",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Backoff => "backoff",
            LinkState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A copy of the link's state and counters (counters are since the daemon started; the
/// outbox's own counters in [`OutboxStats`] are persistent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    pub state: LinkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// When the current state began, ms since the Unix epoch.
    pub since_ms: i64,
    /// The last connection error, kept after a reconnect for diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// In `backoff`: when the next attempt is due, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
    pub connects_total: u64,
    pub failures_total: u64,
    pub published_total: u64,
    pub acked_total: u64,
    pub commands_total: u64,
    /// Only alarm rows remain and they exceed the quota.
    pub buffer_full: bool,
    pub quota_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    state: LinkState,
    since_ms: i64,
    last_error: Option<String>,
    retry_at_ms: Option<i64>,
}

/// Live link status, shared by the link and housekeeping tasks and the daemon.
#[derive(Debug)]
pub struct UplinkStatus {
    host: Option<String>,
    port: Option<u16>,
    /// State transitions are rare (connect, fail); a mutex keeps state, time and error
    /// consistent with each other, counters are separate atomics on the hot path.
    inner: Mutex<Inner>,
    pub connects_total: AtomicU64,
    pub failures_total: AtomicU64,
    /// Rows handed to the MQTT client (re-sends included).
    pub published_total: AtomicU64,
    /// PUBACKs (PUBCOMPs for QoS 2) matched to a row.
    pub acked_total: AtomicU64,
    pub commands_total: AtomicU64,
    pub buffer_full: AtomicBool,
    pub quota_bytes: AtomicU64,
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl UplinkStatus {
    pub fn new(settings: Option<&LinkSettings>) -> Self {
        Self {
            host: settings.map(|s| s.host.clone()),
            port: settings.map(|s| s.port),
            inner: Mutex::new(Inner {
                state: if settings.is_some() {
                    LinkState::Connecting
                } else {
                    LinkState::Disabled
                },
                since_ms: now_ms(),
                last_error: None,
                retry_at_ms: None,
            }),
            connects_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            published_total: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            commands_total: AtomicU64::new(0),
            buffer_full: AtomicBool::new(false),
            quota_bytes: AtomicU64::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut inner) = self.inner.lock() {
            f(&mut inner);
        }
    }

    pub fn set_connecting(&self) {
        self.update(|i| {
            i.state = LinkState::Connecting;
            i.since_ms = now_ms();
            i.retry_at_ms = None;
        });
    }

    pub fn set_connected(&self) {
        self.connects_total.fetch_add(1, Ordering::Relaxed);
        self.update(|i| {
            i.state = LinkState::Connected;
            i.since_ms = now_ms();
            i.retry_at_ms = None;
        });
    }

    pub fn set_backoff(&self, error: String, retry_in: Duration) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        self.update(|i| {
            let now = now_ms();
            i.state = LinkState::Backoff;
            i.since_ms = now;
            i.last_error = Some(error);
            i.retry_at_ms = Some(now + i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX / 2));
        });
    }

    pub fn set_stopped(&self) {
        self.update(|i| {
            if i.state != LinkState::Disabled {
                i.state = LinkState::Stopped;
                i.since_ms = now_ms();
                i.retry_at_ms = None;
            }
        });
    }

    pub fn state(&self) -> LinkState {
        self.inner
            .lock()
            .map(|i| i.state)
            .unwrap_or(LinkState::Stopped)
    }

    pub fn snapshot(&self) -> LinkSnapshot {
        let (state, since_ms, last_error, retry_at_ms) = self
            .inner
            .lock()
            .map(|i| (i.state, i.since_ms, i.last_error.clone(), i.retry_at_ms))
            .unwrap_or((LinkState::Stopped, now_ms(), None, None));
        LinkSnapshot {
            state,
            host: self.host.clone(),
            port: self.port,
            since_ms,
            last_error,
            retry_at_ms,
            connects_total: self.connects_total.load(Ordering::Relaxed),
            failures_total: self.failures_total.load(Ordering::Relaxed),
            published_total: self.published_total.load(Ordering::Relaxed),
            acked_total: self.acked_total.load(Ordering::Relaxed),
            commands_total: self.commands_total.load(Ordering::Relaxed),
            buffer_full: self.buffer_full.load(Ordering::Relaxed),
            quota_bytes: self.quota_bytes.load(Ordering::Relaxed),
        }
    }
}

/// What the daemon writes to `status.json` every second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub updated_at_ms: i64,
    pub link: LinkSnapshot,
    /// Sensor ingest counters (top [`STATUS_TOP_DEVICES`] devices by rejections); absent in
    /// files from older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<StatsSnapshot>,
    /// The alert task's database health (events waiting because the database refused them);
    /// absent in files from older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_store: Option<AlertStoreSnapshot>,
    /// The disk reserve (absent: none kept, or a file from an older version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<ReserveSnapshot>,
    /// Every supervised stage and the self-test (absent in files from older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSnapshot>,
    /// Each analysed camera's counters: frames decoded versus analysed show a camera that
    /// streams but is not watched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cameras: BTreeMap<String, CameraSnapshot>,
}

/// Devices with the most rejections kept in `status.json`.
pub const STATUS_TOP_DEVICES: usize = 20;

impl StatusFile {
    /// Writes atomically (temp file in the same directory, then rename), so a reader never
    /// sees half a file. When that fails — a full disk has no room for the new file — the
    /// existing file is overwritten in place instead, padded with spaces to its old length so
    /// that no new block is needed: `gateway status` can then still show why alerts wait.
    pub fn write(&self, path: &Path) -> Result<(), UplinkError> {
        let io = |source| UplinkError::StatusFile {
            path: path.to_owned(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|source| UplinkError::StatusJson {
            path: path.to_owned(),
            source,
        })?;
        let tmp = path.with_extension("json.tmp");
        let atomic = write_private(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path));
        match atomic {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                overwrite_in_place(path, json).map_err(|_| io(e))
            }
        }
    }

    /// Reads the file; a parse error is retried a few times, because an in-place write (see
    /// [`StatusFile::write`]) may be read half-way.
    pub fn read(path: &Path) -> Result<StatusFile, UplinkError> {
        let mut attempts = 0;
        loop {
            let bytes = std::fs::read(path).map_err(|source| UplinkError::StatusFile {
                path: path.to_owned(),
                source,
            })?;
            match serde_json::from_slice(&bytes) {
                Ok(file) => return Ok(file),
                Err(_) if attempts < 3 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(30));
                }
                Err(source) => {
                    return Err(UplinkError::StatusJson {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
    }
}

/// Overwrites an existing file from its start without truncating it first; shorter content is
/// padded with spaces (JSON allows trailing whitespace) so the file keeps its blocks.
/// Writes `bytes` to `path` readable by its owner only (the status names devices and
/// faults; an older install may have left a world-readable file behind).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

fn overwrite_in_place(path: &Path, mut json: Vec<u8>) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let old_len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    if json.len() < old_len {
        json.resize(old_len, b' ');
    }
    file.write_all(&json)
}

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
pub fn status_report(data_dir: &Path) -> Result<StatusReport, UplinkError> {
    let db_path = data_dir.join(crate::db::FILE_NAME);
    let db_err = |source| UplinkError::Database {
        path: db_path.clone(),
        source,
    };
    let conn = crate::db::open_reader(&db_path).map_err(db_err)?;
    let stats = outbox::stats(&conn)?;
    let now = now_ms();
    let file = match StatusFile::read(&data_dir.join(STATUS_FILE)) {
        Ok(file) => Some(file),
        Err(UplinkError::StatusFile { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
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
        link: file.map(|f| f.link),
        oldest_undelivered_age_s: stats
            .oldest_undelivered_ms
            .map(|t| (now.saturating_sub(t)).max(0) as f64 / 1000.0),
        outbox: stats,
    })
}

/// Whether process `pid` exists and is a gateway (its command name says so, so that a pid
/// reused by another program after a reboot does not count). Linux only; elsewhere `false`.
fn gateway_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == env!("CARGO_PKG_NAME"))
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) as f64 / 1000.0;
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// `sensors: N accepted, M rejected (reason n, …); most rejected: dev n, …`.
fn sensors_line(i: &StatsSnapshot) -> String {
    let mut line = format!(
        "sensors:     {} accepted, {} rejected",
        i.accepted, i.rejected_total
    );
    if i.rejected_total > 0 {
        let reasons: Vec<String> = i
            .rejected_by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        line.push_str(&format!(" ({})", reasons.join(", ")));
        let top: Vec<String> = i
            .top_devices(3)
            .into_iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        line.push_str(&format!("; most rejected: {}", top.join(", ")));
    }
    line
}

/// `alert store: N events waiting …` when the database refused a write in this run.
fn alert_store_line(a: &AlertStoreSnapshot) -> Option<String> {
    if a.failures_total == 0 {
        return None;
    }
    let mut line = format!(
        "alert store: {} events waiting for the database, {} failed writes, {} dropped",
        a.deferred, a.failures_total, a.dropped_total
    );
    if let Some(e) = &a.last_error {
        line.push_str(&format!("; last error: {e}"));
    }
    Some(line)
}

/// `stages: all 9 running` or one line per stage that is faulted or restarted.
fn stage_lines(stages: &BTreeMap<String, StageHealth>, now: i64) -> Vec<String> {
    let troubled: Vec<String> = stages
        .iter()
        .filter(|(_, s)| s.faulted_since.is_some() || s.restarts > 0)
        .map(|(name, s)| {
            let mut line = match s.faulted_since {
                Some(t) => format!(
                    "  {name}: FAULT ({}) for {}",
                    match s.severity {
                        Severity::AlarmPath => "alarm path",
                        Severity::Degraded => "degraded",
                    },
                    ago(now - t.timestamp_millis())
                ),
                None => format!("  {name}: {:?}", s.state).to_lowercase(),
            };
            line.push_str(&format!(", {} restarts", s.restarts));
            if let Some(e) = &s.last_error {
                line.push_str(&format!("; last error: {e}"));
            }
            line
        })
        .collect();
    let faulted = stages
        .values()
        .filter(|s| s.faulted_since.is_some())
        .count();
    let mut lines = vec![format!(
        "stages:      {} supervised, {}",
        stages.len(),
        if faulted == 0 {
            "no fault".to_owned()
        } else {
            format!("{faulted} FAULTED")
        }
    )];
    lines.extend(troubled);
    lines
}

/// `disk reserve: 16.0 MB held` or `disk reserve: RELEASED 3.0 min ago for …`.
fn reserve_line(r: &ReserveSnapshot, now: i64) -> Option<String> {
    match (r.held, r.released_at_ms) {
        (true, _) => Some(format!("disk reserve: {} held", mb(r.bytes))),
        (false, Some(at)) => Some(format!(
            "disk reserve: RELEASED {} ago for {} (the disk filled up); free space, then \
             restart the gateway to restore it",
            ago(now - at),
            r.released_for.as_deref().unwrap_or("a write")
        )),
        (false, None) if r.bytes > 0 => Some(format!(
            "disk reserve: none (no room for {} at start-up)",
            mb(r.bytes)
        )),
        (false, None) => None,
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = now_ms();
        writeln!(f, "data dir:    {}", self.data_dir.display())?;
        self.fmt_daemon(f, now)?;
        self.fmt_link(f, now)?;
        self.fmt_supervision(f, now)?;
        self.fmt_outbox(f)?;
        if let Some(i) = &self.ingest {
            write!(f, "\n{}", sensors_line(i))?;
        }
        if let Some(line) = self.alert_store.as_ref().and_then(alert_store_line) {
            write!(f, "\n{line}")?;
        }
        if let Some(line) = self.reserve.as_ref().and_then(|r| reserve_line(r, now)) {
            write!(f, "\n{line}")?;
        }
        Ok(())
    }
}

impl StatusReport {
    fn fmt_daemon(&self, f: &mut fmt::Formatter<'_>, now: i64) -> fmt::Result {
        match (self.running, self.status_updated_at_ms) {
            (true, _) => writeln!(f, "daemon:      running"),
            (false, Some(t)) if self.stale_but_alive => writeln!(
                f,
                "daemon:      running, but it last wrote its status {} ago: it cannot write \
                 to its data directory (disk full?)",
                ago(now - t)
            ),
            (false, Some(t)) => writeln!(
                f,
                "daemon:      not running (last status {} ago)",
                ago(now - t)
            ),
            (false, None) => writeln!(f, "daemon:      not running (no status file)"),
        }
    }

    fn fmt_link(&self, f: &mut fmt::Formatter<'_>, now: i64) -> fmt::Result {
        let (Some(link), true) = (&self.link, self.running) else {
            return writeln!(f, "uplink:      unknown (daemon not running)");
        };
        let target = match (&link.host, link.port) {
            (Some(h), Some(p)) => format!(" {h}:{p}"),
            _ => String::new(),
        };
        let mut line = format!("{}{target}, for {}", link.state, ago(now - link.since_ms));
        if let Some(at) = link.retry_at_ms {
            line.push_str(&format!(", next attempt in {}", ago(at - now)));
        }
        writeln!(f, "uplink:      {line}")?;
        if let Some(e) = &link.last_error {
            writeln!(f, "last error:  {e}")?;
        }
        writeln!(
            f,
            "this run:    {} connects, {} failures, {} published, {} acknowledged, {} commands",
            link.connects_total,
            link.failures_total,
            link.published_total,
            link.acked_total,
            link.commands_total
        )
    }

    /// Stages, the self-test and the cameras.
    fn fmt_supervision(&self, f: &mut fmt::Formatter<'_>, now: i64) -> fmt::Result {
        if let Some(stages) = &self.stages {
            for line in stage_lines(stages, now) {
                writeln!(f, "{line}")?;
            }
        }
        if let Some(st) = &self.self_test {
            writeln!(f, "self-test:   {}", crate::selftest::describe(st))?;
        }
        for (id, c) in &self.cameras {
            writeln!(
                f,
                "camera {id}: decoded {}, analysed {}, timestamp jumps {}, analysis stalls {}, \
                 dropped {}, reconnects {}, errors {}",
                c.decoded,
                c.analysed,
                c.discontinuities,
                c.analysis_stalls,
                c.dropped,
                c.reconnects,
                c.errors
            )?;
        }
        Ok(())
    }

    fn fmt_outbox(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.outbox;
        let b = &o.backlog_by_class;
        write!(
            f,
            "backlog:     {} rows (alarm {}, warning {}, notice {}, telemetry {}), {}",
            o.backlog_total,
            b.alarm,
            b.warning,
            b.notice,
            b.telemetry,
            mb(o.bytes)
        )?;
        match self.link.as_ref().map(|l| l.quota_bytes).filter(|q| *q > 0) {
            Some(q) => writeln!(f, " of {} quota", mb(q))?,
            None => writeln!(f)?,
        }
        match self.oldest_undelivered_age_s {
            Some(s) => writeln!(
                f,
                "oldest:      undelivered for {}",
                ago((s * 1000.0) as i64)
            )?,
            None => writeln!(f, "oldest:      nothing undelivered")?,
        }
        let e = &o.evicted_by_class;
        writeln!(
            f,
            "delivered:   {}   re-sent: {}   evicted: {} (telemetry {}, notice {}, warning {})",
            o.delivered_total, o.requeued_total, o.evicted_total, e.telemetry, e.notice, e.warning
        )?;
        let full = self.running && self.link.as_ref().is_some_and(|l| l.buffer_full);
        write!(f, "buffer_full: {}", if full { "YES" } else { "no" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{commit_with, enqueue_batch, Class, Durability, NewMessage, Outbox};

    const KEY: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    /// A status file written `age_ms` ago by process `pid`, with no link and no counters.
    fn status_file(pid: u32, age_ms: i64) -> StatusFile {
        StatusFile {
            pid,
            updated_at_ms: now_ms() - age_ms,
            link: UplinkStatus::new(None).snapshot(),
            ingest: None,
            alert_store: None,
            reserve: None,
            health: None,
            cameras: BTreeMap::new(),
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
