//! Everything `/metrics` reads at scrape time from what the stages already keep: the same
//! shared counters `status.json` is written from ([`StatusSources`]), the telemetry
//! writer's counters, and the database read-only (the outbox as `gateway status` reads it,
//! the active alerts as the console reads them). Nothing here counts anything itself.

use std::fmt::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use edge_config::Level;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{Label, Out};
use super::MetricsError;
use crate::alerts::task::AlertStoreSnapshot;
use crate::ingest::StatsSnapshot;
use crate::outbox::{Class, OutboxStats};
use crate::status::StatusSources;
use crate::supervise::HealthSnapshot;
use crate::telemetry::TelemetryStats;
use crate::uplink::{now_ms, LinkSnapshot, LinkState};

const LEVELS: [Level; 4] = [Level::Red, Level::Orange, Level::Yellow, Level::Blue];
const LINK_STATES: [LinkState; 5] = [
    LinkState::Disabled,
    LinkState::Connecting,
    LinkState::Connected,
    LinkState::Backoff,
    LinkState::Stopped,
];

/// What `/metrics` reads on each scrape.
#[derive(Debug, Clone)]
pub struct MetricsSources {
    /// The stages' shared counters, as the status writer gets them.
    pub status: StatusSources,
    /// The telemetry writer's counters (readings committed, dropped).
    pub telemetry: Option<Arc<TelemetryStats>>,
    /// The gateway database, read read-only (outbox backlog, active alerts).
    pub db_path: PathBuf,
}

/// The database as one scrape sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatabaseView {
    pub outbox: OutboxStats,
    /// Undelivered bytes per class.
    pub bytes_by_class: crate::outbox::ClassCounts,
    /// Active (unresolved) alerts per level, in [`LEVELS`] order.
    pub active: [u64; 4],
}

/// Reads the outbox and the active alerts in one read-only connection.
pub fn read_database(path: &Path) -> std::result::Result<DatabaseView, MetricsError> {
    let conn = crate::db::open_reader(path).map_err(|source| MetricsError::Database {
        path: path.to_owned(),
        source,
    })?;
    let outbox = crate::outbox::stats(&conn)?;
    let bytes_by_class = crate::outbox::bytes_by_class(&conn)?;
    let mut active = [0u64; 4];
    let mut stmt = conn
        .prepare("SELECT level, COUNT(*) FROM alerts WHERE active = 1 GROUP BY level")
        .map_err(MetricsError::Query)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(MetricsError::Query)?;
    for row in rows {
        let (level, n) = row.map_err(MetricsError::Query)?;
        if let Some(i) = LEVELS.iter().position(|l| l.as_str() == level) {
            active[i] = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(DatabaseView {
        outbox,
        bytes_by_class,
        active,
    })
}

impl Collector for MetricsSources {
    fn encode(&self, encoder: DescriptorEncoder) -> Result {
        let mut out = Out(encoder);
        let s = &self.status;
        out.gauges(
            "shouwang_build_info",
            "The gateway's version (always 1).",
            &[([("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        )?;
        if let Some(ingest) = &s.ingest {
            encode_ingest(&mut out, &ingest.snapshot())?;
        }
        if let Some(t) = &self.telemetry {
            encode_telemetry(&mut out, t)?;
        }
        if let Some(a) = &s.alert_store {
            encode_alert_store(&mut out, &a.snapshot())?;
        }
        let link = s.link.snapshot();
        encode_database(&mut out, &self.db_path, link.quota_bytes)?;
        encode_uplink(&mut out, &link)?;
        if let Some(cameras) = s.cameras.get() {
            encode_cameras(&mut out, &cameras)?;
        }
        if let Some(h) = &s.health {
            encode_health(&mut out, &h.snapshot())?;
        }
        if let Some(r) = &s.reserve {
            let r = r.snapshot();
            out.flag(
                "shouwang_disk_reserve_held",
                "1 while the disk reserve file is in place; 0 once it was given up because the \
                 disk filled (or none is kept).",
                r.held,
            )?;
            out.gauge(
                "shouwang_disk_reserve_bytes",
                "Configured size of the disk reserve, bytes.",
                r.bytes as f64,
            )?;
        }
        if let Some(b) = &s.broker {
            encode_broker(&mut out, b)?;
        }
        Ok(())
    }
}

fn encode_ingest(out: &mut Out, s: &StatsSnapshot) -> Result {
    out.counter(
        "shouwang_sensor_messages_accepted",
        "Sensor messages decoded into readings.",
        s.accepted,
    )?;
    // Every known reason from the start (0 until it happens), so that a rate over the
    // first rejection is not lost; any other reason as it comes.
    let mut by_reason: Vec<(Label, u64)> = crate::ingest::decode::Reject::ALL
        .iter()
        .map(|r| ([("reason", r.as_str())], 0))
        .collect();
    for (reason, n) in &s.rejected_by_reason {
        match by_reason
            .iter_mut()
            .find(|(l, _)| l[0].1 == reason.as_str())
        {
            Some((_, count)) => *count = *n,
            None => by_reason.push(([("reason", reason.as_str())], *n)),
        }
    }
    out.counters(
        "shouwang_sensor_messages_rejected",
        "Sensor messages rejected, by reason.",
        &by_reason,
    )
}

fn encode_telemetry(out: &mut Out, t: &TelemetryStats) -> Result {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    out.counter(
        "shouwang_readings_committed",
        "Readings committed to the outbox's telemetry stream.",
        g(&t.committed),
    )?;
    out.counters(
        "shouwang_readings_not_stored",
        "Readings not stored: dropped (the writer was behind), failed (the commit failed), \
         paused (the disk filled up).",
        &[
            ([("reason", "dropped")], g(&t.dropped)),
            ([("reason", "failed")], g(&t.failed_rows)),
            ([("reason", "paused")], g(&t.paused_rows)),
        ],
    )
}

fn encode_alert_store(out: &mut Out, a: &AlertStoreSnapshot) -> Result {
    out.gauge(
        "shouwang_alert_events_deferred",
        "Alert events waiting in memory for a database that refused them.",
        a.deferred as f64,
    )?;
    out.counter(
        "shouwang_alert_commit_failures",
        "Alert-event commits the database refused.",
        a.failures_total,
    )?;
    out.counter(
        "shouwang_alert_events_dropped",
        "Alert events dropped because too many were already waiting for the database.",
        a.dropped_total,
    )
}

/// The outbox and the active alerts, or `shouwang_database_readable 0` alone.
fn encode_database(out: &mut Out, path: &Path, quota_bytes: u64) -> Result {
    let view = match read_database(path) {
        Ok(view) => view,
        Err(e) => {
            tracing::debug!(error = %e, "metrics: database not readable");
            return out.flag(
                "shouwang_database_readable",
                "1 when the scrape could read the gateway database (outbox, active alerts).",
                false,
            );
        }
    };
    out.flag(
        "shouwang_database_readable",
        "1 when the scrape could read the gateway database (outbox, active alerts).",
        true,
    )?;
    let active: Vec<(Label, f64)> = LEVELS
        .iter()
        .zip(view.active)
        .map(|(l, n)| ([("level", l.as_str())], n as f64))
        .collect();
    out.gauges(
        "shouwang_alerts_active",
        "Alerts not yet resolved, by level.",
        &active,
    )?;
    encode_outbox(out, &view.outbox, &view.bytes_by_class, quota_bytes)
}

fn encode_outbox(
    out: &mut Out,
    o: &OutboxStats,
    bytes: &crate::outbox::ClassCounts,
    quota_bytes: u64,
) -> Result {
    let by_class = |f: &dyn Fn(Class) -> u64| -> Vec<(Label, f64)> {
        Class::DRAIN_ORDER
            .iter()
            .map(|c| ([("class", c.as_str())], f(*c) as f64))
            .collect()
    };
    out.gauges(
        "shouwang_outbox_backlog_rows",
        "Rows not yet delivered upstream (pending or in flight), by class.",
        &by_class(&|c| o.backlog_by_class.get(c)),
    )?;
    out.gauge(
        "shouwang_outbox_bytes",
        "Bytes the undelivered rows take, as the disk quota counts them.",
        o.bytes as f64,
    )?;
    out.gauges(
        "shouwang_outbox_backlog_bytes",
        "Bytes of the undelivered rows, by class (as the disk quota counts them).",
        &by_class(&|c| bytes.get(c)),
    )?;
    out.gauge(
        "shouwang_outbox_quota_bytes",
        "The outbox's disk quota, bytes (0: no uplink).",
        quota_bytes as f64,
    )?;
    let age = o
        .oldest_undelivered_ms
        .map_or(0.0, |t| now_ms().saturating_sub(t).max(0) as f64 / 1000.0);
    out.gauge(
        "shouwang_outbox_oldest_undelivered_age_seconds",
        "Age of the oldest undelivered row, seconds (0 when everything is delivered).",
        age,
    )?;
    out.counter(
        "shouwang_outbox_delivered",
        "Rows the platform acknowledged (kept across restarts).",
        o.delivered_total,
    )?;
    let evicted: Vec<(Label, u64)> = Class::EVICTION_ORDER
        .iter()
        .map(|c| ([("class", c.as_str())], o.evicted_by_class.get(*c)))
        .collect();
    out.counters(
        "shouwang_outbox_evicted",
        "Rows evicted by the disk quota before delivery, by class (kept across restarts).",
        &evicted,
    )
}

fn encode_uplink(out: &mut Out, l: &LinkSnapshot) -> Result {
    let states: Vec<(Label, f64)> = LINK_STATES
        .iter()
        .map(|s| ([("state", s.as_str())], f64::from(u8::from(*s == l.state))))
        .collect();
    out.gauges(
        "shouwang_uplink_state",
        "1 for the uplink's current state (disabled, connecting, connected, backoff, stopped).",
        &states,
    )?;
    // Which of `[uplink] hosts` the link is on (or trying): failover is visible.
    let broker = match (&l.host, l.port) {
        (Some(h), Some(p)) => vec![format!("{h}:{p}")],
        _ => Vec::new(),
    };
    let on: Vec<(Label, f64)> = broker
        .iter()
        .map(|b| ([("broker", b.as_str())], 1.0))
        .collect();
    out.gauges(
        "shouwang_uplink_broker",
        "1 for the platform broker the uplink is on or trying (one of [uplink] hosts).",
        &on,
    )?;
    out.counter(
        "shouwang_uplink_connects",
        "Uplink connections established.",
        l.connects_total,
    )?;
    out.counter(
        "shouwang_uplink_failures",
        "Uplink connection failures.",
        l.failures_total,
    )?;
    out.counter(
        "shouwang_uplink_published",
        "Rows handed to the upstream MQTT client (re-sends included).",
        l.published_total,
    )?;
    out.counter(
        "shouwang_uplink_acked",
        "Rows the upstream broker acknowledged.",
        l.acked_total,
    )?;
    out.flag(
        "shouwang_uplink_buffer_full",
        "1 while only alarm rows are left and they exceed the outbox quota.",
        l.buffer_full,
    )
}

/// One counter of a camera's snapshot.
type CameraCounter = fn(&crate::video::StatsSnapshot) -> u64;

fn encode_cameras(out: &mut Out, cameras: &crate::video::Cameras) -> Result {
    let snaps: Vec<(&str, crate::video::StatsSnapshot)> = cameras
        .iter()
        .map(|(id, s)| (id.as_str(), s.snapshot()))
        .collect();
    let each = |f: fn(&crate::video::StatsSnapshot) -> u64| -> Vec<(Label, u64)> {
        snaps
            .iter()
            .map(|(id, s)| ([("camera", *id)], f(s)))
            .collect()
    };
    let families: [(&str, &str, CameraCounter); 5] = [
        (
            "shouwang_camera_frames_decoded",
            "Frames decoded, per camera.",
            |s| s.decoded,
        ),
        (
            "shouwang_camera_frames_analysed",
            "Frames whose analysis finished (detector run, or no motion), per camera.",
            |s| s.analysed,
        ),
        (
            "shouwang_camera_frames_dropped",
            "Sampled frames dropped because the analysis was busy, per camera.",
            |s| s.dropped,
        ),
        (
            "shouwang_camera_errors",
            "Open, decode, inference and evidence errors, per camera.",
            |s| s.errors,
        ),
        (
            "shouwang_camera_reconnects",
            "Stream reconnection attempts, per camera.",
            |s| s.reconnects,
        ),
    ];
    for (name, help, f) in families {
        out.counters(name, help, &each(f))?;
    }
    let latency: Vec<_> = cameras
        .iter()
        .map(|(id, s)| {
            let counts = s.latency.counts();
            let buckets = counts
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let le = crate::video::latency::BOUNDS_MS
                        .get(i)
                        .map_or(f64::INFINITY, |ms| *ms as f64 / 1000.0);
                    (le, n)
                })
                .collect();
            ([("camera", id.as_str())], s.latency.sum_seconds(), buckets)
        })
        .collect();
    out.histograms(
        "shouwang_detection_latency_seconds",
        "Frame decoded to its detections available, per camera (frames motion gating sent to no detection are not counted).",
        &latency,
    )
}

fn encode_health(out: &mut Out, h: &HealthSnapshot) -> Result {
    if let Some(st) = &h.self_test {
        if let Some(ms) = st.round_trip_ms {
            out.gauge(
                "shouwang_selftest_round_trip_seconds",
                "The last self-test's round trip through the alarm path (broker → ingest → \
                 rules → alert commit), seconds.",
                ms as f64 / 1000.0,
            )?;
        }
        out.flag(
            "shouwang_selftest_failing",
            "1 while self-test round trips are missed (a red gateway_fault).",
            st.failing_since.is_some(),
        )?;
    }
    let faulted: Vec<(Label, f64)> = h
        .stages
        .iter()
        .map(|(n, s)| {
            (
                [("stage", n.as_str())],
                f64::from(u8::from(s.faulted_since.is_some())),
            )
        })
        .collect();
    out.gauges(
        "shouwang_stage_faulted",
        "1 while a supervised stage is faulted.",
        &faulted,
    )?;
    let restarts: Vec<(Label, u64)> = h
        .stages
        .iter()
        .map(|(n, s)| ([("stage", n.as_str())], s.restarts))
        .collect();
    out.counters(
        "shouwang_stage_restarts",
        "Times a supervised stage was started again after a failure.",
        &restarts,
    )
}

fn encode_broker(out: &mut Out, b: &crate::broker::front::FrontStats) -> Result {
    let f = b.snapshot();
    out.counter(
        "shouwang_broker_connections_accepted",
        "TCP connections the embedded broker accepted.",
        f.accepted,
    )?;
    out.counters(
        "shouwang_broker_connections_refused",
        "Connections the embedded broker's front refused or closed, by reason.",
        &[
            ([("reason", "login")], f.refused_login),
            ([("reason", "busy")], f.refused_busy),
            ([("reason", "over_budget")], f.over_budget),
            ([("reason", "connect_timeout")], f.connect_timeouts),
            ([("reason", "tls_failed")], f.tls_failed),
        ],
    )
}
