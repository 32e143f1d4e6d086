//! A street station's compounds (issue 19): their alert events, stored as they come, and
//! their liveness.
//!
//! A compound gateway forwards every alert event to its station over its `[station_link]`
//! (`shouwang/{compound}/alerts`, the same JSON its platform gets) and beats every 20 s
//! (`shouwang/{compound}/heartbeat`). On the station both arrive on the embedded broker under
//! the compound's own login — the broker lets it publish only under its own site id — and
//! travel the alarm path like a sensor's message: a broker log of their own, ingest (size and
//! shape checked), the rules stage, then the alert task, which commits them here with
//! `synchronous=FULL` before the compound gets its PUBACK (the commit gate). A compound that
//! was cut off re-sends from its own outbox when it returns, in order; what the station
//! already has is recognised by `seq` and changes nothing.
//!
//! ```sql
//! CREATE TABLE remote_alerts (
//!     id TEXT PRIMARY KEY,            -- the compound's alert id (ULID, global)
//!     compound TEXT NOT NULL,         -- its site id
//!     seq INTEGER NOT NULL,           -- the compound's seq of the latest event kept
//!     kind TEXT, level TEXT, state TEXT, active INTEGER,
//!     updated_at TEXT, received_at TEXT,
//!     body TEXT NOT NULL              -- the latest event's JSON
//! );
//! ```
//!
//! An event replaces the row only when its `seq` is newer **and** the row is the same
//! compound's: a compound cannot overwrite another's alert by reusing its id.
//!
//! Liveness: a compound silent (no heartbeat, no alert) for its `offline_after_s` gets a
//! `compound_offline` alert (orange: the station may not hear that compound's alarms),
//! resolved by its next message. Every compound counts as heard when the task starts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use edge_config::Config;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::lifecycle::timestamp;
use super::model::Source;

/// Why a compound's alert event was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteReject {
    #[error("field {0} is missing or of the wrong type")]
    Field(&'static str),
    #[error("the event says site {said:?}, but came from compound {from:?}")]
    WrongSite { said: String, from: String },
    #[error("level {0:?} is not red, orange, yellow or blue")]
    Level(String),
}

/// One alert event of a compound, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEvent {
    pub id: String,
    pub seq: u64,
    pub kind: String,
    pub level: String,
    pub state: String,
    pub updated_at: String,
    pub body: Value,
}

impl RemoteEvent {
    /// Checks `payload` (a JSON object from `compound`'s topic).
    pub fn parse(compound: &str, payload: &[u8]) -> Result<RemoteEvent, RemoteReject> {
        let body: Value =
            serde_json::from_slice(payload).map_err(|_| RemoteReject::Field("(JSON)"))?;
        let text = |k: &'static str| {
            body.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .map(str::to_owned)
                .ok_or(RemoteReject::Field(k))
        };
        let site = text("site")?;
        if site != compound {
            return Err(RemoteReject::WrongSite {
                said: site,
                from: compound.to_owned(),
            });
        }
        let level = text("level")?;
        if !["red", "orange", "yellow", "blue"].contains(&level.as_str()) {
            return Err(RemoteReject::Level(level));
        }
        Ok(RemoteEvent {
            id: text("id")?,
            seq: body
                .get("seq")
                .and_then(Value::as_u64)
                .filter(|s| i64::try_from(*s).is_ok())
                .ok_or(RemoteReject::Field("seq"))?,
            kind: text("kind")?,
            level,
            state: text("state")?,
            updated_at: text("updated_at")?,
            body,
        })
    }
}

/// Stores `e` from `compound` in the caller's transaction; whether it changed anything (a
/// redelivery or an older event does not).
pub fn store(
    conn: &Connection,
    compound: &str,
    e: &RemoteEvent,
    at: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT INTO remote_alerts
             (id, compound, seq, kind, level, state, active, updated_at, received_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET
             seq = excluded.seq, kind = excluded.kind, level = excluded.level,
             state = excluded.state, active = excluded.active,
             updated_at = excluded.updated_at, received_at = excluded.received_at,
             body = excluded.body
         WHERE excluded.seq > remote_alerts.seq AND remote_alerts.compound = excluded.compound",
        params![
            e.id,
            compound,
            e.seq as i64,
            e.kind,
            e.level,
            e.state,
            e.state != "resolved",
            e.updated_at,
            timestamp(at),
            e.body.to_string(),
        ],
    )?;
    Ok(n > 0)
}

/// Records `compound`'s heartbeat (its link's own figures, e.g. `unacknowledged`) at `at`.
pub fn store_heartbeat(
    conn: &Connection,
    compound: &str,
    body: &Value,
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO remote_compounds (compound, heartbeat_at, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (compound) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, body = excluded.body",
        params![compound, timestamp(at), body.to_string()],
    )?;
    Ok(())
}

/// Each compound's last heartbeat: when, and what it said.
pub fn heartbeats(conn: &Connection) -> rusqlite::Result<HashMap<String, (String, Value)>> {
    let mut stmt = conn.prepare("SELECT compound, heartbeat_at, body FROM remote_compounds")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (c, at, body) = row?;
        out.insert(c, (at, serde_json::from_str(&body).unwrap_or(Value::Null)));
    }
    Ok(out)
}

/// The compound whose alert `id` is, and whether it is still active there.
pub fn compound_of(conn: &Connection, id: &str) -> rusqlite::Result<Option<(String, bool)>> {
    conn.query_row(
        "SELECT compound, active FROM remote_alerts WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// The latest event of every alert of the compounds (active first, newest first), at most
/// `limit`, optionally of one compound.
pub fn list(
    conn: &Connection,
    compound: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<Value>> {
    let mut stmt = conn.prepare(
        "SELECT body, received_at FROM remote_alerts WHERE (?1 IS NULL OR compound = ?1)
         ORDER BY active DESC, updated_at DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![compound, limit as i64], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (body, received_at) = row?;
        if let Ok(mut v) = serde_json::from_str::<Value>(&body) {
            v["received_at"] = received_at.into();
            out.push(v);
        }
    }
    Ok(out)
}

/// Active alerts per compound and level.
pub fn active_counts(conn: &Connection) -> rusqlite::Result<HashMap<String, HashMap<String, u64>>> {
    let mut stmt = conn.prepare(
        "SELECT compound, level, COUNT(*) FROM remote_alerts WHERE active = 1 GROUP BY compound, level",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for row in rows {
        let (c, level, n) = row?;
        out.entry(c)
            .or_default()
            .insert(level, u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// The source of a compound's `compound_offline` alert.
pub fn offline_source(compound: &str) -> Source {
    Source::Gateway(format!("compound:{compound}"))
}

/// When each compound was last heard, and which are silent.
#[derive(Debug, Default)]
pub struct Liveness {
    /// compound → (last heard, silent after, reported offline).
    compounds: HashMap<String, (DateTime<Utc>, chrono::Duration, bool)>,
}

/// A change of a compound's liveness, to raise or resolve its `compound_offline` alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessChange {
    Silent {
        compound: String,
        name: String,
        silent_s: i64,
    },
    Heard {
        compound: String,
    },
}

impl LivenessChange {
    /// The compound it is about.
    pub fn compound(&self) -> &str {
        match self {
            LivenessChange::Silent { compound, .. } | LivenessChange::Heard { compound } => {
                compound
            }
        }
    }
}

impl Liveness {
    /// Every compound of `config`, heard at `now`.
    pub fn new(config: &Config, now: DateTime<Utc>) -> Self {
        Liveness {
            compounds: config
                .compounds
                .iter()
                .map(|c| {
                    let after = chrono::Duration::seconds(i64::from(c.offline_after_s));
                    (c.id.clone(), (now, after, false))
                })
                .collect(),
        }
    }

    /// `compound` said something at `at`.
    pub fn heard(&mut self, compound: &str, at: DateTime<Utc>) -> Option<LivenessChange> {
        let (last, _, offline) = self.compounds.get_mut(compound)?;
        *last = at;
        std::mem::take(offline).then(|| LivenessChange::Heard {
            compound: compound.to_owned(),
        })
    }

    /// Compounds that fell silent by `now` (each reported once until heard again).
    pub fn tick(&mut self, config: &Config, now: DateTime<Utc>) -> Vec<LivenessChange> {
        let mut out = Vec::new();
        for (id, (last, after, offline)) in &mut self.compounds {
            if !*offline && now - *last > *after {
                *offline = true;
                let name = config
                    .compounds
                    .iter()
                    .find(|c| &c.id == id)
                    .map_or_else(|| id.clone(), |c| c.name.clone());
                out.push(LivenessChange::Silent {
                    compound: id.clone(),
                    name,
                    silent_s: (now - *last).num_seconds(),
                });
            }
        }
        // In compound order, whatever the map's: the alerts are raised in a stable order.
        out.sort_by(|a, b| a.compound().cmp(b.compound()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(site: &str, id: &str, seq: u64, state: &str) -> Vec<u8> {
        serde_json::json!({
            "id": id, "seq": seq, "site": site, "kind": "gas", "level": "red",
            "state": state, "event": state, "updated_at": "2026-11-29T18:00:00.000Z",
        })
        .to_string()
        .into_bytes()
    }

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        crate::db::migrate(&conn).unwrap();
        conn
    }

    #[test]
    fn an_event_is_kept_once_and_only_a_newer_one_of_the_same_compound_replaces_it() {
        let conn = db();
        let at = Utc::now();
        let raised = RemoteEvent::parse("a", &event("a", "A1", 5, "raised")).unwrap();
        assert!(store(&conn, "a", &raised, at).unwrap());
        assert!(
            !store(&conn, "a", &raised, at).unwrap(),
            "a redelivery changes nothing"
        );
        let acked = RemoteEvent::parse("a", &event("a", "A1", 6, "acknowledged")).unwrap();
        assert!(store(&conn, "a", &acked, at).unwrap());
        assert!(
            !store(&conn, "a", &raised, at).unwrap(),
            "an older event changes nothing"
        );
        // Compound b reuses a's alert id with a higher seq: refused.
        let forged = RemoteEvent::parse("b", &event("b", "A1", 99, "resolved")).unwrap();
        assert!(!store(&conn, "b", &forged, at).unwrap());
        assert_eq!(compound_of(&conn, "A1").unwrap(), Some(("a".into(), true)));
        let listed = list(&conn, Some("a"), 10).unwrap();
        assert_eq!(listed[0]["state"], "acknowledged");
    }

    #[test]
    fn a_compound_silent_past_its_limit_is_reported_once_and_heard_again_by_any_message() {
        let text = "[site]\nid = \"st\"\nname = \"S\"\nkind = \"street_station\"\n\
                    [[compounds]]\nid = \"a\"\nname = \"幸福里\"\nusername = \"a-link\"\npassword = \"x\"\noffline_after_s = 90\n";
        let config = edge_config::parse(text, "t.toml", std::path::Path::new(".")).unwrap();
        let t0 = Utc::now();
        let s = |n: i64| t0 + chrono::Duration::seconds(n);
        let mut l = Liveness::new(&config, t0);
        assert!(l.tick(&config, s(60)).is_empty());
        assert_eq!(l.heard("a", s(80)), None, "heard while online: no change");
        assert!(
            l.tick(&config, s(169)).is_empty(),
            "89 s after the last beat"
        );
        assert_eq!(
            l.tick(&config, s(171)),
            [LivenessChange::Silent {
                compound: "a".into(),
                name: "幸福里".into(),
                silent_s: 91
            }]
        );
        assert!(l.tick(&config, s(300)).is_empty(), "reported once");
        assert_eq!(
            l.heard("a", s(301)),
            Some(LivenessChange::Heard {
                compound: "a".into()
            })
        );
        assert_eq!(
            l.heard("nobody", s(301)),
            None,
            "an unknown compound is ignored"
        );
    }

    #[test]
    fn an_event_naming_another_site_or_missing_fields_is_refused() {
        assert!(matches!(
            RemoteEvent::parse("b", &event("a", "A1", 1, "raised")),
            Err(RemoteReject::WrongSite { .. })
        ));
        assert_eq!(
            RemoteEvent::parse("a", br#"{"site":"a","id":"x","level":"red"}"#),
            Err(RemoteReject::Field("seq"))
        );
        let mut bad = serde_json::from_slice::<Value>(&event("a", "A1", 1, "raised")).unwrap();
        bad["level"] = "purple".into();
        assert_eq!(
            RemoteEvent::parse("a", bad.to_string().as_bytes()),
            Err(RemoteReject::Level("purple".into()))
        );
    }
}
