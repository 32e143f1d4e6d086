//! Alert persistence: the alert record, its event history and its outbox row commit in one
//! SQLite transaction, before the alert is published anywhere.
//!
//! ```sql
//! CREATE TABLE alerts (
//!     id TEXT PRIMARY KEY,            -- ULID
//!     source TEXT NOT NULL,           -- Source::key(), e.g. device:b1-smoke-1
//!     kind TEXT NOT NULL,
//!     active INTEGER NOT NULL,        -- 1 until resolved
//!     level TEXT NOT NULL, state TEXT NOT NULL,
//!     raised_at TEXT NOT NULL, updated_at TEXT NOT NULL,
//!     body TEXT NOT NULL              -- the Alert as JSON (what the console and platform get)
//! );
//! CREATE UNIQUE INDEX alerts_one_active ON alerts (source, kind) WHERE active = 1;
//! CREATE TABLE alert_events (seq INTEGER PRIMARY KEY, alert_id TEXT NOT NULL,
//!     event TEXT NOT NULL, at TEXT NOT NULL, body TEXT NOT NULL);
//! CREATE TABLE alerts_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);  -- next_seq
//! ```
//!
//! The tables are created and versioned by [`crate::db::migrate`] (schema version 1).
//!
//! The partial unique index enforces "one active alert per (source, kind)" in the database
//! itself. `seq` comes from `alerts_meta.next_seq`, incremented in the same transaction, so
//! it is strictly increasing and gap-free per site even across crashes.

use std::path::Path;

use edge_config::Level;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::lifecycle::timestamp;
use super::model::{Alert, EventKind};
use crate::outbox::{self, Class, Durability, NewMessage};

/// Errors of the alert store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("alert store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("alert store: {0}")]
    Outbox(#[from] outbox::OutboxError),
    #[error("alert store: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("alert store: cannot encode alert {id}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
    #[error("alert store: stored alert {id} is unreadable: {source}")]
    Decode {
        id: String,
        source: serde_json::Error,
    },
}

/// Maps an alert level to its outbox class (drain priority and eviction order).
pub fn class_of(level: Level) -> Class {
    match level {
        Level::Red | Level::Orange => Class::Alarm,
        Level::Yellow => Class::Warning,
        Level::Blue => Class::Notice,
    }
}

/// The alert store. Owns the database's writer connection.
pub struct AlertStore {
    /// The single writer: alert records and outbox rows are written only through it, so
    /// `next_seq` needs no further locking.
    conn: Connection,
}

impl AlertStore {
    /// Opens the gateway database, migrating its schema, and creates the outbox tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = crate::db::open_writer(path)?;
        Self::from_connection(conn)
    }

    pub fn from_connection(mut conn: Connection) -> Result<Self, StoreError> {
        outbox::configure_connection(&mut conn)?;
        crate::db::migrate(&conn)?;
        outbox::migrate(&conn)?;
        Ok(AlertStore { conn })
    }

    /// The underlying connection (for read-only queries such as status).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Records an event of `alert`: assigns the next `seq`, stores the alert and the event,
    /// and enqueues it for the platform — all in one transaction, with `synchronous=FULL`.
    /// On error nothing is written and `alert` keeps its previous `seq`.
    pub fn record(&mut self, alert: &mut Alert, event: EventKind) -> Result<u64, StoreError> {
        let mut staged = alert.clone();
        staged.event = event;
        let seq = outbox::commit_with(&mut self.conn, Durability::Full, |tx| {
            let seq = next_seq(tx)?;
            staged.seq = seq;
            write(tx, &staged)?;
            Ok::<u64, StoreError>(seq)
        })?;
        *alert = staged;
        Ok(seq)
    }

    /// Commits a compound's alert event (street station) with `synchronous=FULL`; whether it
    /// changed anything (see [`super::remote`]).
    ///
    /// With `forward`, a new event also goes into the outbox for the station's upstreams, in
    /// the same transaction: unchanged, with the compound's `seq`.
    pub fn record_remote(
        &mut self,
        compound: &str,
        event: &super::remote::RemoteEvent,
        at: chrono::DateTime<chrono::Utc>,
        forward: bool,
    ) -> Result<bool, StoreError> {
        outbox::commit_with(&mut self.conn, Durability::Full, |tx| {
            let new = super::remote::store(tx, compound, event, at)?;
            if new && forward {
                let level = match event.level.as_str() {
                    "red" => Level::Red,
                    "orange" => Level::Orange,
                    "yellow" => Level::Yellow,
                    _ => Level::Blue,
                };
                let msg = NewMessage::alert(
                    class_of(level),
                    ulid::Ulid::generate().to_string(),
                    event.seq,
                    event.body.to_string(),
                    at.timestamp_millis(),
                );
                outbox::enqueue(tx, &msg)?;
            }
            Ok::<bool, StoreError>(new)
        })
    }

    /// Records a compound's heartbeat (street station; `synchronous=NORMAL`: a lost one only
    /// shows an older time until the next, 20 s later).
    pub fn record_heartbeat(
        &mut self,
        compound: &str,
        body: &serde_json::Value,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        outbox::commit_with(&mut self.conn, Durability::Normal, |tx| {
            super::remote::store_heartbeat(tx, compound, body, at).map_err(StoreError::from)
        })
    }

    /// Commits a self-test probe's nonce (`alerts_meta.self_test_nonce`) the way an alert
    /// event is committed (`synchronous=FULL`), so a completed round trip proves the writer
    /// can still record an alarm. No alert, event or outbox row is made.
    pub fn record_probe(&mut self, nonce: u64) -> Result<(), StoreError> {
        outbox::commit_with(&mut self.conn, Durability::Full, |tx| {
            tx.execute(
                "INSERT INTO alerts_meta (name, value) VALUES ('self_test_nonce', ?1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [nonce as i64],
            )?;
            Ok::<(), StoreError>(())
        })
    }

    /// All alerts not yet resolved (reloaded at start-up).
    pub fn active(&self) -> Result<Vec<Alert>, StoreError> {
        self.query(
            "SELECT id, body FROM alerts WHERE active = 1 ORDER BY raised_at",
            [],
        )
    }

    /// One alert by id.
    pub fn get(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row("SELECT id, body FROM alerts WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        row.map(|(id, body)| decode(&id, &body)).transpose()
    }

    /// The most recent alerts, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            "SELECT id, body FROM alerts ORDER BY raised_at DESC, id DESC LIMIT ?1",
            [limit],
        )
    }

    fn query<P: rusqlite::Params>(&self, sql: &str, params: P) -> Result<Vec<Alert>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (id, body) = row?;
            decode(&id, &body)
        })
        .collect()
    }
}

fn next_seq(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    // Cached statements (here and in `write`, `outbox::enqueue`): an alarm's commit is on
    // the alarm's latency path, and parsing its five statements again each time cost more
    // than the inserts (issue 18).
    let seq: i64 = tx
        .prepare_cached(
            "UPDATE alerts_meta SET value = value + 1 WHERE name = 'next_seq' RETURNING value - 1",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

fn write(tx: &Transaction<'_>, alert: &Alert) -> Result<(), StoreError> {
    let body = serde_json::to_string(alert).map_err(|source| StoreError::Encode {
        id: alert.id.clone(),
        source,
    })?;
    let active = alert.state.is_active();
    tx.prepare_cached(
        "INSERT INTO alerts (id, source, kind, active, level, state, raised_at, updated_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET active = ?4, level = ?5, state = ?6, updated_at = ?8, body = ?9",
    )?
    .execute(params![
            alert.id,
            alert.source.key(),
            alert.kind.as_str(),
            active,
            alert.level.as_str(),
            serde_json::to_value(alert.state).ok().and_then(|v| v.as_str().map(str::to_owned)),
            timestamp(alert.raised_at),
            timestamp(alert.updated_at),
            body
        ],
    )?;
    tx.prepare_cached(
        "INSERT INTO alert_events (seq, alert_id, event, at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        alert.seq as i64,
        alert.id,
        alert.event.as_str(),
        timestamp(alert.updated_at),
        body
    ])?;
    let created_ms = alert.updated_at.timestamp_millis();
    let msg = NewMessage::alert(
        class_of(alert.level),
        ulid::Ulid::generate().to_string(),
        alert.seq,
        body,
        created_ms,
    );
    outbox::enqueue(tx, &msg)?;
    Ok(())
}

fn decode(id: &str, body: &str) -> Result<Alert, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Decode {
        id: id.to_owned(),
        source,
    })
}
