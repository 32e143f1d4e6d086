//! How `gateway status` reads: one line per concern, problems spelled out.

use std::collections::BTreeMap;
use std::fmt;

use super::StatusReport;
use crate::alerts::task::AlertStoreSnapshot;
use crate::ingest::StatsSnapshot;
use crate::reserve::ReserveSnapshot;
use crate::supervise::{Severity, StageHealth};
use crate::uplink::now_ms;

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
        self.fmt_one_link(f, now, "uplink:     ", link)?;
        if let Some(station) = &self.station_link {
            self.fmt_one_link(f, now, "station:    ", station)?;
        }
        Ok(())
    }

    fn fmt_one_link(
        &self,
        f: &mut fmt::Formatter<'_>,
        now: i64,
        label: &str,
        link: &crate::uplink::LinkSnapshot,
    ) -> fmt::Result {
        let target = match (&link.host, link.port) {
            (Some(h), Some(p)) => format!(" {h}:{p}"),
            _ => String::new(),
        };
        let mut line = format!("{}{target}, for {}", link.state, ago(now - link.since_ms));
        if let Some(at) = link.retry_at_ms {
            line.push_str(&format!(", next attempt in {}", ago(at - now)));
        }
        writeln!(f, "{label} {line}")?;
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
            if !c.decoder.requested.is_off() {
                let d = &c.decoder;
                let why = d.fallback.as_deref().map(|r| format!(" ({r})"));
                let why = why.unwrap_or_default();
                writeln!(f, "camera {id}: decoder {}{why}", d.in_use)?;
            }
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
