//! Read-only queries for the console on its own SQLite connection (WAL: readers never
//! block the alert task, the single writer).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::ConsoleError;
use crate::alerts::Alert;

/// Filters of `GET /api/alerts`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AlertQuery {
    /// `active` (not resolved), or one state: raised, updated, escalated, acknowledged, resolved.
    pub state: Option<String>,
    pub kind: Option<String>,
    pub building: Option<String>,
    pub limit: Option<usize>,
}

/// Opens the database read-only.
pub fn open(db: &Path) -> Result<Connection, ConsoleError> {
    Ok(crate::db::open_reader(db)?)
}

fn decode(body: &str) -> Result<Alert, ConsoleError> {
    Ok(serde_json::from_str(body)?)
}

/// Alerts matching `q`, newest first (at most 500).
pub fn alerts(conn: &Connection, q: &AlertQuery) -> Result<Vec<Alert>, ConsoleError> {
    let limit = i64::try_from(q.limit.unwrap_or(100).clamp(1, 500)).unwrap_or(100);
    let (active_only, state) = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some("active") => (true, None),
        other => (false, other),
    };
    let mut stmt = conn.prepare(
        "SELECT body FROM alerts
         WHERE (?1 = 0 OR active = 1)
           AND (?2 IS NULL OR state = ?2)
           AND (?3 IS NULL OR kind = ?3)
           AND (?4 IS NULL OR json_extract(body, '$.location.building') = ?4)
         ORDER BY raised_at DESC, id DESC LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        rusqlite::params![
            active_only,
            state,
            q.kind.as_deref().filter(|s| !s.is_empty()),
            q.building.as_deref().filter(|s| !s.is_empty()),
            limit
        ],
        |r| r.get::<_, String>(0),
    )?;
    rows.map(|b| decode(&b?)).collect()
}

/// Every active alert of one of `kinds` located in `building` or in one of `areas`, newest
/// first, however many other alerts are active (the resident page narrows it further).
pub fn active_in(
    conn: &Connection,
    kinds: &[&str],
    building: &str,
    areas: &[&str],
) -> Result<Vec<Alert>, ConsoleError> {
    let list = |v: &[&str]| serde_json::Value::from(v.to_vec()).to_string();
    let mut stmt = conn.prepare(
        "SELECT body FROM alerts
         WHERE active = 1
           AND kind IN (SELECT value FROM json_each(?1))
           AND (json_extract(body, '$.location.building') = ?2
                OR json_extract(body, '$.location.area') IN (SELECT value FROM json_each(?3)))
         ORDER BY raised_at DESC, id DESC",
    )?;
    let rows = stmt.query_map(rusqlite::params![list(kinds), building, list(areas)], |r| {
        r.get::<_, String>(0)
    })?;
    rows.map(|b| decode(&b?)).collect()
}

/// `kind:level` of every active alert of each device, however many alerts are active.
pub fn active_by_device(conn: &Connection) -> Result<BTreeMap<String, Vec<String>>, ConsoleError> {
    let mut stmt = conn.prepare(
        "SELECT substr(source, 8), kind, level FROM alerts
         WHERE active = 1 AND source LIKE 'device:%'
         ORDER BY raised_at, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            format!("{}:{}", r.get::<_, String>(1)?, r.get::<_, String>(2)?),
        ))
    })?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        let (device, alert) = row?;
        out.entry(device).or_default().push(alert);
    }
    Ok(out)
}

/// One alert by id.
pub fn alert(conn: &Connection, id: &str) -> Result<Option<Alert>, ConsoleError> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM alerts WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    body.map(|b| decode(&b)).transpose()
}

/// Alerts raised at or after `since`, any state.
pub fn raised_since(conn: &Connection, since: DateTime<Utc>) -> Result<Vec<Alert>, ConsoleError> {
    let mut stmt = conn.prepare("SELECT body FROM alerts WHERE raised_at >= ?1")?;
    let since = crate::alerts::lifecycle::timestamp(since);
    let rows = stmt.query_map([since], |r| r.get::<_, String>(0))?;
    rows.map(|b| decode(&b?)).collect()
}

/// Median and 90th percentile of a set of durations, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub count: usize,
    pub median_s: Option<f64>,
    pub p90_s: Option<f64>,
}

impl Figures {
    fn of(mut v: Vec<f64>) -> Figures {
        v.sort_by(f64::total_cmp);
        // Nearest-rank percentile.
        let rank = |p: f64| -> Option<f64> {
            let n = v.len();
            (n > 0).then(|| {
                let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
                v[i]
            })
        };
        Figures {
            count: v.len(),
            median_s: rank(0.5),
            p90_s: rank(0.9),
        }
    }
}

/// Time to acknowledge and to resolve, for one kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindFigures {
    pub raised: usize,
    pub acknowledge: Figures,
    pub resolve: Figures,
}

fn secs_between(a: DateTime<Utc>, b: Option<DateTime<Utc>>) -> Option<f64> {
    Some(((b? - a).num_milliseconds().max(0)) as f64 / 1000.0)
}

/// Response-time figures per kind over the alerts raised since `since`.
pub fn response_times(alerts: &[Alert]) -> BTreeMap<String, KindFigures> {
    let mut acc: BTreeMap<String, (usize, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for a in alerts {
        let e = acc.entry(a.kind.as_str().to_owned()).or_default();
        e.0 += 1;
        if let Some(s) = secs_between(a.raised_at, a.acknowledged_at) {
            e.1.push(s);
        }
        if let Some(s) = secs_between(a.raised_at, a.resolved_at) {
            e.2.push(s);
        }
    }
    acc.into_iter()
        .map(|(k, (raised, ack, res))| {
            (
                k,
                KindFigures {
                    raised,
                    acknowledge: Figures::of(ack),
                    resolve: Figures::of(res),
                },
            )
        })
        .collect()
}

/// `now - d`.
pub fn ago(now: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    now - d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let f = Figures::of((1..=10).map(f64::from).collect());
        assert_eq!((f.count, f.median_s, f.p90_s), (10, Some(5.0), Some(9.0)));
        assert_eq!(Figures::of(vec![]).median_s, None);
        assert_eq!(Figures::of(vec![3.0]).p90_s, Some(3.0));
    }
}
