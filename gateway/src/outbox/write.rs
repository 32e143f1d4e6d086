//! Write side: enqueue on the caller's transaction, and the durability
//! policy for committing it.

use std::fmt;

use rusqlite::{params, Connection, Statement, Transaction, TransactionBehavior};

use super::schema::{read_synchronous, synchronous_name};
use super::{NewMessage, OutboxError, RowId};

/// How hard a commit must try to reach the disk (`PRAGMA synchronous`).
///
/// Ordered from weakest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Durability {
    /// `synchronous=NORMAL`: in WAL mode the WAL is fsynced only at
    /// checkpoints; the last commits may roll back after a power cut.
    Normal,
    /// `synchronous=FULL`: the WAL is fsynced at every commit.
    Full,
}

impl Durability {
    /// The strongest durability any of `msgs` requires
    /// ([`super::Class::required_durability`]); `Normal` for an empty slice.
    pub fn for_messages(msgs: &[NewMessage]) -> Self {
        msgs.iter()
            .map(|m| m.class.required_durability())
            .max()
            .unwrap_or(Durability::Normal)
    }

    /// The `PRAGMA synchronous` value.
    pub const fn pragma_value(self) -> i64 {
        match self {
            Durability::Normal => 1,
            Durability::Full => 2,
        }
    }

    /// Whether a transaction running with `PRAGMA synchronous = level`
    /// satisfies this durability.
    pub const fn is_met_by(self, level: i64) -> bool {
        level >= self.pragma_value()
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(synchronous_name(self.pragma_value()))
    }
}

/// Runs `f` in one `BEGIN IMMEDIATE` transaction committed with the given
/// durability, and returns its result.
///
/// `PRAGMA synchronous` cannot change inside a transaction, so it is set
/// before `BEGIN` and restored afterwards (`Full` keeps an already stronger
/// `EXTRA`). If `f` fails, the transaction rolls back. If restoring the
/// previous level fails after a successful commit, that is logged, not
/// returned: the data is committed and the caller must not retry.
///
/// ```no_run
/// # use gateway::outbox::{self, Class, Durability, NewMessage, OutboxError};
/// # fn demo(conn: &mut rusqlite::Connection, msg: NewMessage) -> Result<(), OutboxError> {
/// let row = outbox::commit_with(conn, Durability::Full, |tx| {
///     tx.execute("INSERT INTO alerts (id) VALUES (?1)", [&msg.key])?;
///     outbox::enqueue(tx, &msg)
/// })?;
/// # let _ = row; Ok(()) }
/// ```
pub fn commit_with<T, E, F>(conn: &mut Connection, durability: Durability, f: F) -> Result<T, E>
where
    F: FnOnce(&Transaction<'_>) -> Result<T, E>,
    E: From<OutboxError>,
{
    if !conn.is_autocommit() {
        return Err(OutboxError::TransactionAlreadyOpen.into());
    }
    let previous = read_synchronous(conn)?;
    let wanted = match durability {
        Durability::Full if durability.is_met_by(previous) => previous,
        _ => durability.pragma_value(),
    };
    if wanted != previous {
        conn.pragma_update(None, "synchronous", wanted)
            .map_err(OutboxError::from)?;
    }

    let result = run_in_tx(conn, f);

    if wanted != previous {
        if let Err(err) = conn.pragma_update(None, "synchronous", previous) {
            tracing::warn!(
                error = %err,
                previous = synchronous_name(previous),
                "outbox: could not restore PRAGMA synchronous after commit"
            );
        }
    }
    result
}

fn run_in_tx<T, E, F>(conn: &mut Connection, f: F) -> Result<T, E>
where
    F: FnOnce(&Transaction<'_>) -> Result<T, E>,
    E: From<OutboxError>,
{
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(OutboxError::from)?;
    let value = f(&tx)?;
    tx.commit().map_err(OutboxError::from)?;
    Ok(value)
}

const INSERT: &str =
    "INSERT INTO outbox (class, stream, seq, created_at_ms, size, msg_key, payload, dest)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The registered destinations as (dest, streams bit mask), in order.
fn destinations(conn: &Connection) -> Result<Vec<(i64, i64)>, OutboxError> {
    let mut stmt = conn.prepare_cached("SELECT dest, streams FROM outbox_dest ORDER BY dest")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Adds one message to the outbox inside the caller's transaction, so that
/// it commits or rolls back together with the caller's other writes (the
/// alert record).
///
/// Fails with [`OutboxError::WeakDurability`] if the transaction would
/// commit with a weaker `synchronous` level than the message's class
/// requires (use [`commit_with`]). The insert and its byte accounting are
/// one statement, so an error leaves the transaction unchanged.
pub fn enqueue(tx: &Transaction<'_>, msg: &NewMessage) -> Result<RowId, OutboxError> {
    msg.validate()?;
    check_durability(tx, std::slice::from_ref(msg))?;
    let dests = destinations(tx)?;
    let mut insert = tx.prepare_cached(INSERT)?;
    insert_one(&mut insert, &dests, msg)
}

/// Adds many messages (typically telemetry) in the caller's transaction;
/// returns their row ids in input order. One prepared statement for the
/// whole batch. All messages are validated before anything is inserted; if
/// SQLite fails half-way (disk full, I/O error) the caller must roll back,
/// which dropping the transaction (e.g. `?` inside [`commit_with`]) does.
pub fn enqueue_batch(tx: &Transaction<'_>, msgs: &[NewMessage]) -> Result<Vec<RowId>, OutboxError> {
    for msg in msgs {
        msg.validate()?;
    }
    if msgs.is_empty() {
        return Ok(Vec::new());
    }
    check_durability(tx, msgs)?;
    let dests = destinations(tx)?;
    let mut insert = tx.prepare(INSERT)?;
    msgs.iter()
        .map(|msg| insert_one(&mut insert, &dests, msg))
        .collect()
}

fn check_durability(conn: &Connection, msgs: &[NewMessage]) -> Result<(), OutboxError> {
    let required = Durability::for_messages(msgs);
    let actual = read_synchronous(conn)?;
    if required.is_met_by(actual) {
        return Ok(());
    }
    let class = msgs
        .iter()
        .map(|m| m.class)
        .filter(|c| c.required_durability() == required)
        .min()
        .unwrap_or(super::Class::Alarm);
    Err(OutboxError::WeakDurability {
        class,
        required,
        actual: synchronous_name(actual),
    })
}

/// Inserts `msg` once for each destination that takes its stream; returns the row of the
/// first (the platform's, destination 0, when it takes the stream).
fn insert_one(
    insert: &mut Statement<'_>,
    dests: &[(i64, i64)],
    msg: &NewMessage,
) -> Result<RowId, OutboxError> {
    // validate() guarantees seq fits in i64; map instead of unwrap regardless.
    let seq = match msg.seq {
        Some(seq) => Some(i64::try_from(seq).map_err(|_| OutboxError::InvalidMessage {
            key: msg.key.clone(),
            reason: super::InvalidReason::SeqOutOfRange(seq),
        })?),
        None => None,
    };
    let size = i64::try_from(msg.accounted_size()).unwrap_or(i64::MAX);
    let stream = msg.stream.code();
    let mut first = None;
    for (dest, _) in dests.iter().filter(|(_, s)| (s >> stream) & 1 == 1) {
        let id = insert.insert(params![
            msg.class.code(),
            stream,
            seq,
            msg.created_at_ms,
            size,
            msg.key,
            msg.payload,
            dest,
        ])?;
        first.get_or_insert(RowId(id));
    }
    first.ok_or(OutboxError::NoDestination { stream: msg.stream })
}

/// An upstream the outbox keeps rows for (see [`register_destinations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Its number in the `dest` column; 0 is the platform.
    pub dest: u8,
    /// For logs and status (`platform`, `station`).
    pub name: String,
    /// The streams it takes.
    pub streams: Vec<super::Stream>,
}

/// Makes `dests` the outbox's destinations: messages enqueued from now on are stored once
/// for each one that takes their stream. The platform (destination 0, every stream) is
/// always one of them, whatever `dests` says: an alert always has a row to be stored in. Rows of a destination no longer registered (a
/// station link removed from the config) are deleted, counted and logged: nobody would
/// ever deliver them, and their alarm rows would fill the quota for good. Returns how
/// many rows were deleted.
pub fn register_destinations(conn: &Connection, dests: &[Destination]) -> Result<u64, OutboxError> {
    super::schema::in_write_tx(conn, |conn| {
        conn.execute("DELETE FROM outbox_dest", [])?;
        let mut add =
            conn.prepare("INSERT INTO outbox_dest (dest, name, streams) VALUES (?1, ?2, ?3)")?;
        add.execute(params![0, "platform", 3])?;
        for d in dests.iter().filter(|d| d.dest != 0) {
            let mask: i64 = d.streams.iter().map(|s| 1_i64 << s.code()).sum();
            add.execute(params![d.dest, d.name, mask])?;
        }
        let orphans = conn.execute(
            "DELETE FROM outbox WHERE dest NOT IN (SELECT dest FROM outbox_dest)",
            [],
        )?;
        if orphans > 0 {
            tracing::warn!(
                rows = orphans,
                "outbox: rows of an upstream no longer configured deleted"
            );
        }
        Ok(orphans as u64)
    })
}
