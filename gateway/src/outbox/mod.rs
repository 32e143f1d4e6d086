//! Durable outbox: every alert and telemetry message bound for the platform
//! is kept in SQLite until the platform acknowledges it (MQTT QoS 1 PUBACK).
//!
//! The gateway keeps working while the WAN link is down; the outbox is the
//! only place where "sent upstream" is decided. Its promises are:
//!
//! * **nothing lost**: a row leaves the outbox only when its PUBACK arrived
//!   (`ack`) or when the disk quota forces an eviction, which is counted;
//!   alarm rows are never evicted;
//! * **in order**: rows are handed out by class priority, then by the alert's
//!   sequence number (see [Priority and ordering](#priority-and-ordering));
//! * **survives power cuts and SIGKILL**: alert rows are committed with
//!   `synchronous=FULL` in the same transaction as the alert record; in-flight
//!   state lives only in memory, so after a crash every unacked row is simply
//!   pending again (at-least-once delivery; duplicates are de-duplicated
//!   upstream on the message key).
//!
//! # Roles and connections
//!
//! ```text
//!   alert store (its own Connection)            uplink task (owns an `Outbox`)
//!   ────────────────────────────────            ──────────────────────────────
//!   commit_with(conn, Durability::Full, |tx| {   next_batch(limit) ─► publish QoS 1
//!       insert alert record …                    ack(row_id)       ◄─ PUBACK
//!       outbox::enqueue(tx, &msg)                requeue_inflight() on reconnect
//!   })                                           stats(), enforce_quota()
//!                     ╲                          ╱
//!                      one SQLite file, WAL mode
//! ```
//!
//! * The **write side** is a set of free functions that work on the caller's
//!   [`rusqlite::Transaction`] ([`enqueue`], [`enqueue_batch`]) so that the
//!   alert store commits an alert event *and* its outbox row atomically. The
//!   outbox never opens a transaction behind the caller's back on this path.
//! * The **drain side** is the owning type [`Outbox`], which has its own
//!   connection to the same file. WAL lets it read (and delete acked rows)
//!   while the alert store writes; writers are serialised by SQLite's write
//!   lock and wait up to [`BUSY_TIMEOUT`] for it. Every write transaction is
//!   `BEGIN IMMEDIATE` so that no read-then-write upgrade can fail with
//!   `SQLITE_BUSY_SNAPSHOT`.
//! * [`migrate`], [`stats`], [`enforce_quota`] and [`pending_rows`] take any
//!   `&Connection` (a `Transaction` derefs to one), so the status API and the
//!   alert store can use them without an `Outbox`.
//!
//! SQLite calls block; async callers run them on a blocking thread
//! (`spawn_blocking` or a dedicated thread that owns the `Outbox`). An
//! `Outbox` is `Send` but not `Sync`: exactly one task drains.
//!
//! # Schema
//!
//! Created idempotently by [`migrate`] (version [`SCHEMA_VERSION`]):
//!
//! ```sql
//! CREATE TABLE outbox (
//!     id            INTEGER PRIMARY KEY AUTOINCREMENT, -- RowId, never reused
//!     class         INTEGER NOT NULL,  -- 0 alarm, 1 warning, 2 notice, 3 telemetry
//!     stream        INTEGER NOT NULL,  -- 0 alerts, 1 telemetry (MQTT topic)
//!     seq           INTEGER,           -- per-site alert sequence; NULL for telemetry
//!     created_at_ms INTEGER NOT NULL,  -- ms since the Unix epoch
//!     size          INTEGER NOT NULL,  -- accounted bytes (see Disk quota)
//!     msg_key       TEXT    NOT NULL,  -- ULID the platform de-duplicates on
//!     payload       BLOB    NOT NULL,  -- the JSON published upstream
//!     dest          INTEGER NOT NULL DEFAULT 0  -- v2: which upstream (0 platform, 1 station)
//! );
//! CREATE INDEX outbox_drain ON outbox (class, seq);  -- + implicit rowid (quota eviction)
//! CREATE INDEX outbox_dest_drain ON outbox (dest, class, seq);  -- v2: each upstream's drain
//! CREATE TABLE outbox_dest (dest INTEGER PRIMARY KEY, name TEXT, streams INTEGER);  -- v2
//! CREATE TABLE outbox_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
//! -- AFTER INSERT / AFTER DELETE triggers keep outbox_meta.bytes = SUM(size)
//! ```
//!
//! `outbox_meta` holds `schema_version`, `bytes` and the persisted counters
//! (`delivered_total`, `evicted_{warning,notice,telemetry}`,
//! `requeued_total`, `acks_for_missing_rows`). `PRAGMA user_version` belongs
//! to [`crate::db::migrate`] (the alert and resident-link tables); the outbox
//! only ever reads and writes its own tables.
//!
//! `AUTOINCREMENT` costs one extra write to `sqlite_sequence` per insert and
//! buys a guarantee the uplink depends on: a row id is never reused, so a
//! late or duplicate PUBACK for a row that was already acked or evicted can
//! never delete a newer row that happened to get the same id.
//!
//! # Destinations (version 2)
//!
//! A compound may forward to two upstreams, its platform and its street station
//! (`[station_link]`). Each message is stored once per registered destination that takes its
//! stream ([`register_destinations`]; the platform, destination 0, always takes every stream),
//! in the same transaction, and each upstream link owns an [`Outbox`] of its destination
//! ([`Outbox::for_destination`]): its own drain order, in-flight set and acks, so a station
//! that is down holds back nothing of the platform's and the other way round. The quota counts
//! every copy. Rows of a destination no longer registered are deleted at the next start.
//!
//! # Row states
//!
//! ```text
//!            enqueue (committed)          next_batch
//!   ──────────────────────► PENDING ─────────────────► IN-FLIGHT
//!                              ▲  ◄─────────────────────┘ │ │
//!                              │   requeue_inflight,      │ │ ack (PUBACK)
//!                              │   crash, restart         │ ▼
//!                              │                          │ GONE: deleted,
//!                              └─ enforce_quota ──────────┘ delivered_total += 1
//!                                 (evict: GONE, evicted_<class> += 1)
//! ```
//!
//! *Pending* and *in-flight* rows are both rows of the `outbox` table; the
//! difference exists only in the `Outbox`'s memory (a set of row ids). That
//! is deliberate: persisting "sent but not acknowledged" would cost a write
//! per publish and buy nothing, because after a crash or a reconnect an
//! unacknowledged message must be sent again anyway (a PUBACK may never
//! come). So after a restart every row is pending, and [`Outbox::requeue_inflight`]
//! (call it on every reconnect) makes in-flight rows pending again. They are
//! handed out again before newer rows of their class because the drain
//! order is a property of the rows, not of the set. Re-sent rows are
//! counted in `requeued_total`.
//!
//! # Acknowledgement and retention
//!
//! [`Outbox::ack`] deletes the row and counts it in `delivered_total`;
//! [`Outbox::ack_batch`] deletes many in one transaction with **one** statement
//! (`DELETE … WHERE id IN (SELECT value FROM json_each(?)) RETURNING id`, the ids as one
//! JSON array), so SQLite's per-statement work is paid once per batch. No delivered rows are retained: the alert store keeps
//! alert history, the outbox keeps only what still has to go out, which keeps
//! the drain index small and the quota accounting exact. Acking is
//! idempotent: acking a row that no longer exists (a duplicate PUBACK, or a
//! row evicted while in flight) returns [`Delivery::AlreadyGone`] and counts
//! it in `acks_for_missing_rows`; it is never an error.
//!
//! The drain connection commits acks with `synchronous=NORMAL` (see
//! [`configure_connection`]): an ack lost in a power cut only means the row is
//! sent once more, which the platform de-duplicates on `msg_key`.
//!
//! The uplink gathers PUBACKs and acks them in batches (up to a few hundred rows, at most
//! ~20 ms apart while it is busy, at once when nothing else is in flight; see
//! [`crate::uplink`]). Between a PUBACK and the commit of its batch the row is still in the
//! table and in the in-flight set: it is not handed out again, and if the gateway dies
//! before the commit it is pending again after the restart and re-sent in drain order — the
//! same at-least-once case as a PUBACK that never came. Nothing is deleted before its
//! PUBACK, so nothing is lost.
//!
//! # Durability
//!
//! | class                      | commit with          | why |
//! |----------------------------|----------------------|-----|
//! | Alarm, Warning, Notice     | `synchronous=FULL`   | an alert must survive a power cut once the alert store reports it stored |
//! | Telemetry                  | `synchronous=NORMAL` | losing the last few telemetry rows in a power cut is acceptable; batch them |
//!
//! In WAL mode `FULL` fsyncs the WAL at every commit; `NORMAL` only at
//! checkpoints (the database is never corrupted, but the last commits may
//! roll back on power loss). Because `PRAGMA synchronous` cannot be changed
//! inside a transaction, [`commit_with`] sets it *before* `BEGIN IMMEDIATE`,
//! runs the caller's closure in the transaction, commits and restores the
//! previous level. [`enqueue`] and [`enqueue_batch`] *check* the level of the
//! transaction they are given ([`Class::required_durability`]) and refuse an
//! alert row in a transaction that would commit with less than `FULL`
//! ([`OutboxError::WeakDurability`]). Measured here: ~6.5k commits/s with
//! `FULL`, far above any realistic alert rate; telemetry in batches of
//! 100–1000 rows reaches hundreds of thousands of rows/s under `NORMAL`.
//!
//! # Crash recovery
//!
//! There is nothing to replay beyond what SQLite itself does: every state
//! change is one transaction (row + byte accounting via triggers + counters),
//! WAL recovery on the next open restores the last committed state, and the
//! in-flight set starts empty, so every unacked row is pending in drain
//! order. Duplicates upstream after a crash are expected and harmless.
//!
//! # Priority and ordering
//!
//! Drain order is `ORDER BY class, seq, id`, served by the `outbox_drain`
//! index without a sort:
//!
//! 1. class priority: Alarm (red/orange), Warning (yellow), Notice (blue),
//!    Telemetry. A new alarm is handed out before older telemetry that is
//!    still pending.
//! 2. within a class, by `seq` ascending (the per-site alert sequence chosen
//!    by the caller), then by row id (insertion order). Telemetry has no
//!    `seq`, so it drains in insertion order. Alert-stream messages must carry
//!    a `seq`; a NULL would sort first in its class.
//!
//! Upstream therefore sees each class in sequence order, with repeats after
//! a reconnect (`5 6 7 | reconnect | 5 6 7 8`) and with gaps where the quota
//! evicted rows (visible to the platform as missing `seq` values).
//! [`Outbox::next_batch`] skips in-flight rows while walking the index; its
//! cost is proportional to `in-flight + limit` index entries, then one rowid
//! lookup per returned row.
//!
//! # Disk quota
//!
//! Every row is accounted as `payload + key + ROW_OVERHEAD_BYTES` bytes,
//! stored in its `size` column; `AFTER INSERT`/`AFTER DELETE` triggers keep
//! the total in `outbox_meta.bytes` in the same statement, so the total is
//! O(1) to read and cannot drift, even if someone deletes rows by hand.
//!
//! The file size is deliberately not used: the WAL grows until a checkpoint
//! and is not truncated by it; deleted rows leave free pages that stay in
//! the file (there is no auto-vacuum in a shared database); and the alert
//! store lives in the same file. After an eviction the file would not
//! shrink, the quota would still look exceeded, and everything evictable
//! would go. `max_bytes` is therefore a budget for the outbox's *data*;
//! leave headroom on the filesystem for the WAL, free pages and the alerts.
//!
//! [`enforce_quota`] is called by the owner, not by `enqueue`: it needs to
//! report `buffer_full` to someone who can raise a local alert, and
//! `enqueue` runs inside the alert store's transaction. It is O(1) when under
//! quota (one primary-key read), so the gateway calls it after each enqueue
//! commit and from the uplink loop ([`Outbox::enforce_quota`]); the
//! overshoot is bounded by what is enqueued between two calls. Over quota it
//! evicts, in one transaction, the oldest rows (head of the drain order) of
//! **Telemetry, then Notice, then Warning** until the total fits. **Alarm
//! rows are never evicted**: if the total still exceeds the quota,
//! `buffer_full` is reported. Evictions are counted per class in
//! `outbox_meta` and survive restarts. An evicted row that was in flight is
//! acked as [`Delivery::AlreadyGone`] later.
//!
//! # Statistics
//!
//! [`stats`] reads the counters, the byte total, a per-class `COUNT(*)` on
//! the covering drain index (O(backlog), for status calls, never per
//! message) and the `created_at_ms` of the earliest enqueued pending row (a
//! rowid lookup; equal to the minimum `created_at_ms` unless the wall clock
//! stepped backwards).

mod drain;
mod quota;
mod schema;
mod write;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use drain::{pending_rows, pending_rows_of, Delivery, Outbox, OutboxRow};
pub use quota::{bytes_by_class, enforce_quota, recount_bytes, stats, OutboxStats, QuotaReport};
pub use schema::{configure_connection, migrate, BUSY_TIMEOUT, SCHEMA_VERSION};
pub use write::{
    commit_with, enqueue, enqueue_batch, register_destinations, Destination, Durability,
};

/// Bytes accounted per row on top of payload and key: rowid, integer
/// columns, record header, cell pointer and the drain-index entry. An
/// estimate; see the module docs on why the quota is not a file size.
pub const ROW_OVERHEAD_BYTES: u64 = 64;

/// Largest payload accepted by [`enqueue`]. Bigger payloads are rejected so
/// that one message cannot consume the whole quota.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Id of an outbox row (SQLite rowid). Never reused within a database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RowId(i64);

impl RowId {
    /// Wraps a raw rowid (e.g. one stored alongside an MQTT packet id).
    pub const fn new(raw: i64) -> Self {
        Self(raw)
    }

    /// The raw SQLite rowid.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which uplink stream (MQTT topic) a message is published to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// `{prefix}/{site}/alerts`
    Alerts,
    /// `{prefix}/{site}/telemetry`
    Telemetry,
}

impl Stream {
    /// The last topic segment.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stream::Alerts => "alerts",
            Stream::Telemetry => "telemetry",
        }
    }

    /// The MQTT topic this stream publishes to: `{prefix}/{site}/{stream}`.
    pub fn topic(self, prefix: &str, site: &str) -> String {
        format!("{prefix}/{site}/{}", self.as_str())
    }

    pub(crate) const fn code(self) -> i64 {
        match self {
            Stream::Alerts => 0,
            Stream::Telemetry => 1,
        }
    }

    pub(crate) const fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Stream::Alerts),
            1 => Some(Stream::Telemetry),
            _ => None,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Alert level as reported by sensors and video detection.
///
/// Local to the outbox for now; it will be unified with the alert model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Red,
    Orange,
    Yellow,
    Blue,
}

impl FromStr for Level {
    type Err = OutboxError;

    /// Parses `red`, `orange`, `yellow`, `blue` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        [Level::Red, Level::Orange, Level::Yellow, Level::Blue]
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| OutboxError::UnknownLevel(s.to_owned()))
    }
}

impl Level {
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Red => "red",
            Level::Orange => "orange",
            Level::Yellow => "yellow",
            Level::Blue => "blue",
        }
    }
}

/// Drain priority and eviction class of a row. The declaration order is the
/// drain order (`Alarm` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Red and orange alerts: drained first, never evicted.
    Alarm,
    /// Yellow alerts: evicted last, after Notice.
    Warning,
    /// Blue alerts: evicted after Telemetry.
    Notice,
    /// Periodic telemetry: drained last, evicted first.
    Telemetry,
}

impl Class {
    /// All classes in drain order.
    pub const DRAIN_ORDER: [Class; 4] = [
        Class::Alarm,
        Class::Warning,
        Class::Notice,
        Class::Telemetry,
    ];

    /// The classes the quota may evict, in eviction order.
    pub const EVICTION_ORDER: [Class; 3] = [Class::Telemetry, Class::Notice, Class::Warning];

    /// red/orange → Alarm, yellow → Warning, blue → Notice.
    pub const fn from_level(level: Level) -> Self {
        match level {
            Level::Red | Level::Orange => Class::Alarm,
            Level::Yellow => Class::Warning,
            Level::Blue => Class::Notice,
        }
    }

    /// [`Class::from_level`] for a level name such as `"orange"`.
    pub fn from_level_str(level: &str) -> Result<Self, OutboxError> {
        level.parse().map(Class::from_level)
    }

    /// Whether [`enforce_quota`] may evict rows of this class.
    pub const fn is_evictable(self) -> bool {
        !matches!(self, Class::Alarm)
    }

    /// The weakest `synchronous` level a transaction enqueuing this class
    /// may commit with (see the module docs, Durability).
    pub const fn required_durability(self) -> Durability {
        match self {
            Class::Alarm | Class::Warning | Class::Notice => Durability::Full,
            Class::Telemetry => Durability::Normal,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Alarm => "alarm",
            Class::Warning => "warning",
            Class::Notice => "notice",
            Class::Telemetry => "telemetry",
        }
    }

    pub(crate) const fn code(self) -> i64 {
        match self {
            Class::Alarm => 0,
            Class::Warning => 1,
            Class::Notice => 2,
            Class::Telemetry => 3,
        }
    }

    pub(crate) const fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Class::Alarm),
            1 => Some(Class::Warning),
            2 => Some(Class::Notice),
            3 => Some(Class::Telemetry),
            _ => None,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to put into the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub stream: Stream,
    pub class: Class,
    /// The event's id, a ULID string; the platform de-duplicates on it.
    pub key: String,
    /// Per-site monotonic sequence of the alert event (required on the
    /// alerts stream, optional for telemetry). At most `i64::MAX`.
    pub seq: Option<u64>,
    /// The JSON published upstream.
    pub payload: Vec<u8>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

impl NewMessage {
    /// An alert-stream message.
    pub fn alert(
        class: Class,
        key: impl Into<String>,
        seq: u64,
        payload: impl Into<Vec<u8>>,
        created_at_ms: i64,
    ) -> Self {
        Self {
            stream: Stream::Alerts,
            class,
            key: key.into(),
            seq: Some(seq),
            payload: payload.into(),
            created_at_ms,
        }
    }

    /// A telemetry-stream message (class Telemetry, no sequence number).
    pub fn telemetry(
        key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        created_at_ms: i64,
    ) -> Self {
        Self {
            stream: Stream::Telemetry,
            class: Class::Telemetry,
            key: key.into(),
            seq: None,
            payload: payload.into(),
            created_at_ms,
        }
    }

    /// Checks the message without touching the database. Called by
    /// [`enqueue`] and [`enqueue_batch`]. Rules: the key is a ULID; the
    /// alerts stream carries Alarm/Warning/Notice and a `seq`, the telemetry
    /// stream carries class Telemetry; `seq` ≤ `i64::MAX`; the payload is at
    /// most [`MAX_PAYLOAD_BYTES`].
    pub fn validate(&self) -> Result<(), OutboxError> {
        let invalid = |reason| {
            Err(OutboxError::InvalidMessage {
                key: self.key.clone(),
                reason,
            })
        };
        if ulid::Ulid::from_string(&self.key).is_err() {
            return invalid(InvalidReason::KeyNotUlid);
        }
        match (self.stream, self.class) {
            (Stream::Alerts, Class::Telemetry)
            | (Stream::Telemetry, Class::Alarm)
            | (Stream::Telemetry, Class::Warning)
            | (Stream::Telemetry, Class::Notice) => {
                return invalid(InvalidReason::ClassStreamMismatch {
                    stream: self.stream,
                    class: self.class,
                });
            }
            _ => {}
        }
        match self.seq {
            None if self.stream == Stream::Alerts => return invalid(InvalidReason::MissingSeq),
            Some(seq) if i64::try_from(seq).is_err() => {
                return invalid(InvalidReason::SeqOutOfRange(seq))
            }
            _ => {}
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return invalid(InvalidReason::PayloadTooLarge {
                len: self.payload.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(())
    }

    /// Bytes this message is accounted for in the quota.
    pub fn accounted_size(&self) -> u64 {
        // usize → u64 is lossless on every supported target.
        self.payload.len() as u64 + self.key.len() as u64 + ROW_OVERHEAD_BYTES
    }
}

/// Per-class counters (backlog, evictions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub alarm: u64,
    pub warning: u64,
    pub notice: u64,
    pub telemetry: u64,
}

impl ClassCounts {
    pub const fn get(&self, class: Class) -> u64 {
        match class {
            Class::Alarm => self.alarm,
            Class::Warning => self.warning,
            Class::Notice => self.notice,
            Class::Telemetry => self.telemetry,
        }
    }

    pub fn get_mut(&mut self, class: Class) -> &mut u64 {
        match class {
            Class::Alarm => &mut self.alarm,
            Class::Warning => &mut self.warning,
            Class::Notice => &mut self.notice,
            Class::Telemetry => &mut self.telemetry,
        }
    }

    pub const fn total(&self) -> u64 {
        self.alarm + self.warning + self.notice + self.telemetry
    }
}

/// Why a [`NewMessage`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("key is not a ULID")]
    KeyNotUlid,
    #[error("class {class} cannot be published on the {stream} stream")]
    ClassStreamMismatch { stream: Stream, class: Class },
    #[error("alert-stream messages need a seq")]
    MissingSeq,
    #[error("seq {0} exceeds i64::MAX")]
    SeqOutOfRange(u64),
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge { len: usize, max: usize },
}

/// Everything that can go wrong in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error("invalid outbox message {key:?}: {reason}")]
    InvalidMessage { key: String, reason: InvalidReason },

    #[error(
        "{class} rows must be committed with synchronous={required}, \
         but this transaction commits with synchronous={actual} (use outbox::commit_with)"
    )]
    WeakDurability {
        class: Class,
        required: Durability,
        actual: &'static str,
    },

    #[error(
        "a transaction is already open on this connection; \
         PRAGMA synchronous cannot be changed inside it"
    )]
    TransactionAlreadyOpen,

    #[error("outbox schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },

    #[error("the outbox needs WAL mode, but the database reports journal_mode={0}")]
    NotWal(String),

    #[error("corrupt outbox row {id}: {what}")]
    CorruptRow { id: i64, what: String },

    #[error("unknown alert level {0:?} (expected red, orange, yellow or blue)")]
    UnknownLevel(String),

    #[error("no outbox destination takes the {stream:?} stream")]
    NoDestination { stream: Stream },
}

/// Saturating conversion for counters stored as SQLite integers.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    #[test]
    fn levels_map_to_classes() {
        assert_eq!(Class::from_level_str("red").ok(), Some(Class::Alarm));
        assert_eq!(Class::from_level_str("Orange").ok(), Some(Class::Alarm));
        assert_eq!(Class::from_level_str("yellow").ok(), Some(Class::Warning));
        assert_eq!(Class::from_level_str(" BLUE ").ok(), Some(Class::Notice));
        assert!(matches!(
            Class::from_level_str("purple"),
            Err(OutboxError::UnknownLevel(s)) if s == "purple"
        ));
    }

    #[test]
    fn class_order_is_drain_priority_and_codes_round_trip() {
        let mut sorted = Class::DRAIN_ORDER;
        sorted.sort();
        assert_eq!(sorted, Class::DRAIN_ORDER);
        for class in Class::DRAIN_ORDER {
            assert_eq!(Class::from_code(class.code()), Some(class));
        }
        assert!(!Class::EVICTION_ORDER.contains(&Class::Alarm));
        assert!(!Class::Alarm.is_evictable());
    }

    #[test]
    fn topics_follow_prefix_site_stream() {
        assert_eq!(Stream::Alerts.topic("sw", "site-7"), "sw/site-7/alerts");
        assert_eq!(
            Stream::Telemetry.topic("sw", "site-7"),
            "sw/site-7/telemetry"
        );
    }

    #[test]
    fn invalid_messages_are_rejected_without_panicking() {
        let reason = |m: NewMessage| match m.validate() {
            Err(OutboxError::InvalidMessage { reason, .. }) => Some(reason),
            _ => None,
        };
        let ok = NewMessage::alert(Class::Alarm, KEY, 1, b"{}".to_vec(), 0);
        assert!(ok.validate().is_ok());
        assert_eq!(
            reason(NewMessage {
                key: "nope".into(),
                ..ok.clone()
            }),
            Some(InvalidReason::KeyNotUlid)
        );
        assert_eq!(
            reason(NewMessage {
                seq: None,
                ..ok.clone()
            }),
            Some(InvalidReason::MissingSeq)
        );
        assert_eq!(
            reason(NewMessage {
                seq: Some(u64::MAX),
                ..ok.clone()
            }),
            Some(InvalidReason::SeqOutOfRange(u64::MAX))
        );
        assert!(matches!(
            reason(NewMessage {
                class: Class::Telemetry,
                ..ok.clone()
            }),
            Some(InvalidReason::ClassStreamMismatch { .. })
        ));
        assert!(matches!(
            reason(NewMessage {
                payload: vec![0; MAX_PAYLOAD_BYTES + 1],
                ..ok
            }),
            Some(InvalidReason::PayloadTooLarge { .. })
        ));
        assert!(NewMessage::telemetry(KEY, b"{}".to_vec(), 0)
            .validate()
            .is_ok());
    }
}
