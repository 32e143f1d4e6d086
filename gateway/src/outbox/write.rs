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
    "INSERT INTO outbox (class, stream, seq, created_at_ms, size, msg_key, payload)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

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
    let mut insert = tx.prepare(INSERT)?;
    insert_one(&mut insert, msg)
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
    let mut insert = tx.prepare(INSERT)?;
    msgs.iter()
        .map(|msg| insert_one(&mut insert, msg))
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

fn insert_one(insert: &mut Statement<'_>, msg: &NewMessage) -> Result<RowId, OutboxError> {
    // validate() guarantees seq fits in i64; map instead of unwrap regardless.
    let seq = match msg.seq {
        Some(seq) => Some(i64::try_from(seq).map_err(|_| OutboxError::InvalidMessage {
            key: msg.key.clone(),
            reason: super::InvalidReason::SeqOutOfRange(seq),
        })?),
        None => None,
    };
    let size = i64::try_from(msg.accounted_size()).unwrap_or(i64::MAX);
    let id = insert.insert(params![
        msg.class.code(),
        msg.stream.code(),
        seq,
        msg.created_at_ms,
        size,
        msg.key,
        msg.payload,
    ])?;
    Ok(RowId(id))
}
